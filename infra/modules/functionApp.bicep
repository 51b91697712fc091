// Flex Consumption plan + Python 3.11 function app with a system-assigned managed identity.
// Identity-based connections everywhere: no storage keys, no connection strings with secrets.
// On Flex, FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE and
// WEBSITE_CONTENT* must not be set: runtime and deployment live in functionAppConfig.

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the function app (also the host name: {name}.azurewebsites.net).')
param functionAppName string

@description('Host storage account (AzureWebJobsStorage) name.')
param hostStorageAccountName string

@description('Blob container of the host storage account that receives the deployment package.')
param deploymentContainerName string

@description('Maximum number of instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory per instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Largest HTTP request body the Functions host accepts, in bytes (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT; the host default is 104857600).')
param requestBodySizeLimitBytes int = 4294967296

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('True when Application Insights only accepts Entra-authenticated telemetry.')
param appInsightsEntraAuth bool = true

@description('Resource ID of the Log Analytics workspace for the app diagnostic logs.')
param logAnalyticsWorkspaceId string

@description('Lake blob endpoint, e.g. https://account.blob.core.windows.net')
param lakeBlobServiceUri string

@description('Lake dfs endpoint, e.g. https://account.dfs.core.windows.net')
param lakeDfsServiceUri string

@description('Index (Table Storage) endpoint, e.g. https://account.table.core.windows.net')
param indexTableServiceUri string

@description('Lake file system (container).')
param fileSystemName string

@description('{workspace} segment of the lake path AHDS/{workspace}/dicom/{service}/.')
param dicomWorkspace string

@description('{service} segment of the lake path AHDS/{workspace}/dicom/{service}/.')
param dicomService string

@description('Prefix of every index table name.')
param dicomTablePrefix string

var storageSuffix = environment().suffixes.storage
var hostBlobUri = 'https://${hostStorageAccountName}.blob.${storageSuffix}'
var hostQueueUri = 'https://${hostStorageAccountName}.queue.${storageSuffix}'
var hostTableUri = 'https://${hostStorageAccountName}.table.${storageSuffix}'

var baseSettings = [
  // Host storage, identity-based.
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__blobServiceUri'
    value: hostBlobUri
  }
  {
    name: 'AzureWebJobsStorage__queueServiceUri'
    value: hostQueueUri
  }
  {
    name: 'AzureWebJobsStorage__tableServiceUri'
    value: hostTableUri
  }
  // HTTP streams extension (azurefunctions-extensions-http-fastapi) needs init indexing.
  {
    name: 'PYTHON_ENABLE_INIT_INDEXING'
    value: '1'
  }
  {
    name: 'FUNCTIONS_REQUEST_BODY_SIZE_LIMIT'
    value: string(requestBodySizeLimitBytes)
  }
  // The lake: also the `connection` of the Event Grid blob trigger.
  {
    name: 'DicomLake__blobServiceUri'
    value: lakeBlobServiceUri
  }
  {
    name: 'DicomLake__dfsServiceUri'
    value: lakeDfsServiceUri
  }
  {
    name: 'DicomLake__credential'
    value: 'managedidentity'
  }
  // A blob trigger connection given as blobServiceUri must also name a queue service (used for the
  // trigger's poison-blob queue). It points at the HOST account, where the identity already is
  // Storage Queue Data Contributor, so the customer's lake needs no queue role and gets no queues.
  {
    name: 'DicomLake__queueServiceUri'
    value: hostQueueUri
  }
  // The index.
  {
    name: 'DicomIndex__tableServiceUri'
    value: indexTableServiceUri
  }
  {
    name: 'DicomIndex__credential'
    value: 'managedidentity'
  }
  {
    name: 'DICOM_FILESYSTEM'
    value: fileSystemName
  }
  {
    name: 'DICOM_WORKSPACE'
    value: dicomWorkspace
  }
  {
    name: 'DICOM_SERVICE'
    value: dicomService
  }
  {
    name: 'DICOM_TABLE_PREFIX'
    value: dicomTablePrefix
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsightsConnectionString
  }
]

var entraTelemetrySettings = appInsightsEntraAuth ? [
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'Authorization=AAD'
  }
] : []

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    // checkov:skip=CKV_AZURE_225: Zone redundancy of a Flex Consumption plan is offered only in some regions; instances are platform-managed and the state lives in (geo-redundant) storage, so a zone loss costs a restart, not data.
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  // azd finds the app to deploy `api` to by this tag.
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    // checkov:skip=CKV_AZURE_222: A DICOMweb endpoint serves clients and viewers on the internet and receives Event Grid webhook deliveries; restricting it (access restrictions, private endpoint) is a per-customer network decision documented in docs/deploy.md.
    // checkov:skip=CKV_AZURE_17: DICOMweb clients (viewers, dicomweb-client, AI pipelines) and Event Grid do not present TLS client certificates; callers authenticate at the HTTP layer.
    // checkov:skip=CKV_AZURE_212: Flex Consumption scales instances itself (0..maximumInstanceCount); siteConfig.numberOfWorkers does not apply to it.
    // checkov:skip=CKV_AZURE_213: App Service health check (healthCheckPath) is not used on Flex Consumption, which manages instance health itself; the service exposes GET /v2/health/check for external probes.
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: concat(baseSettings, entraTelemetrySettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostBlobUri}/${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
    }
  }
}

// No FTP / SCM basic-auth publishing credentials: deployments authenticate with Entra ID.
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

resource appDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: functionApp
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs' // FunctionAppLogs (and any category the platform adds)
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

output id string = functionApp.id
output name string = functionApp.name
output principalId string = functionApp.identity.principalId
output defaultHostName string = functionApp.properties.defaultHostName
