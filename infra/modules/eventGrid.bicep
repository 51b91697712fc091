// Event Grid system topic on the lake account + two subscriptions to the function app, filtered to
// the contract folder AHDS/{workspace}/dicom/{service}/ of the lake file system.
// Deployed into the lake's resource group (a system topic lives with its source; Azure allows only
// one system topic per source, so an existing one can be reused via existingSystemTopicName).
//
// The subscriptions exist only when deploySubscriptions is true: Event Grid validates an endpoint
// when the subscription is created, and the blobs_extension system key and the two functions
// exist only after the code is deployed (run `azd up`, then `azd provision` with
// DEPLOY_EVENT_SUBSCRIPTIONS=true).

@description('Lake storage account name (in this module\'s resource group).')
param lakeAccountName string

@description('Region of the lake account (a system topic must be in its source\'s region).')
param lakeLocation string

@description('Tags applied to every resource.')
param tags object = {}

@description('Name of the system topic to create on the lake account.')
param systemTopicName string

@description('Name of a system topic that already exists on the lake account (Azure allows one per account). Empty: create systemTopicName.')
param existingSystemTopicName string = ''

@description('Suffix of the subscription names, unique per deployment (several deployments may share one lake and its system topic).')
@maxLength(40)
param subscriptionSuffix string

@description('Resource ID of the function app.')
param functionAppId string

@description('Default host name of the function app, e.g. app.azurewebsites.net')
param functionAppHostName string

@description('Lake file system (container).')
param fileSystemName string

@description('{workspace} segment of the lake path.')
param dicomWorkspace string

@description('{service} segment of the lake path.')
param dicomService string

@description('Create the two event subscriptions (only after the function code is deployed).')
param deploySubscriptions bool = false

@description('Resource ID of the Log Analytics workspace for the topic\'s delivery-failure logs.')
param logAnalyticsWorkspaceId string

// Contract prefix of the lake layout: AHDS/{workspace}/dicom/{service}/ in the file system.
var subjectPrefix = '/blobServices/default/containers/${fileSystemName}/blobs/AHDS/${dicomWorkspace}/dicom/${dicomService}/'

// Complete writes only. Blob endpoint: PutBlob, PutBlockList (block-list commit), CopyBlob.
// dfs endpoint (HNS): FlushWithClose only (CreateFile fires for an empty file first).
var completeWriteApis = [
  'PutBlob'
  'PutBlockList'
  'FlushWithClose'
  'CopyBlob'
]

// ARM evaluates list*() even in a resource whose condition is false; inside if() only the chosen
// branch is evaluated, so the key is read only when the subscriptions are deployed.
var blobsExtensionWebhook = 'https://${functionAppHostName}/runtime/webhooks/blobs?functionName=Host.Functions.lake_blob_created'
var blobCreatedEndpoint = deploySubscriptions ? '${blobsExtensionWebhook}&code=${listKeys('${functionAppId}/host/default', '2023-12-01').systemKeys.blobs_extension}' : blobsExtensionWebhook

resource lake 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: lakeAccountName
}

resource newTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (empty(existingSystemTopicName)) {
  name: systemTopicName
  location: lakeLocation
  tags: tags
  properties: {
    source: lake.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

var topicName = empty(existingSystemTopicName) ? systemTopicName : existingSystemTopicName

resource topicDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (empty(existingSystemTopicName)) {
  name: 'to-log-analytics'
  scope: newTopic
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

// Blob created -> Event Grid-sourced blob trigger `lake_blob_created`, through the blob extension
// webhook of the Functions host, authenticated with the host's blobs_extension system key.
resource blobCreated 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (deploySubscriptions) {
  name: '${topicName}/dicom-created-${subscriptionSuffix}'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: blobCreatedEndpoint
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: subjectPrefix
      subjectEndsWith: '.dcm'
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.api'
          values: completeWriteApis
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
  dependsOn: [
    newTopic
  ]
}

// Blob deleted -> Event Grid-triggered function `lake_blob_deleted` (no blob trigger fires on delete).
resource blobDeleted 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (deploySubscriptions) {
  name: '${topicName}/dicom-deleted-${subscriptionSuffix}'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/lake_blob_deleted'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobDeleted'
      ]
      subjectBeginsWith: subjectPrefix
      subjectEndsWith: '.dcm'
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
  dependsOn: [
    newTopic
  ]
}

output systemTopicName string = topicName
output subjectPrefix string = subjectPrefix
