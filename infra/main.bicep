// DICOMweb service on Azure Functions (Flex Consumption) over the customer's ADLS Gen2 lake.
//
// Resource-group scope, so the same file deploys with
//   az deployment group create -g RG -f infra/main.bicep -p environmentName=NAME ...
// and with `azd up` (azd deploys a resource-group-scoped main.bicep into AZURE_RESOURCE_GROUP;
// infra/main.parameters.json maps azd environment variables to these parameters).
// docs/deploy.md has the commands.
targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// General
// ---------------------------------------------------------------------------------------------

@description('Name of the environment (azd: AZURE_ENV_NAME). Seeds the unique suffix of every resource name.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Region of the app and of every resource this template creates (default: the resource group\'s).')
param location string = resourceGroup().location

@description('Tags added to every resource.')
param tags object = {}

@description('Function app name (also its host name). Empty: func-dicom-{unique suffix}.')
param functionAppName string = ''

// ---------------------------------------------------------------------------------------------
// The lake
// ---------------------------------------------------------------------------------------------

@description('new: create a StorageV2 account with hierarchical namespace (ADLS Gen2) and its file system. existing: bring your own lake (existingLakeAccountName, existingLakeResourceGroup, lakeFileSystemName).')
@allowed([
  'new'
  'existing'
])
param lakeMode string = 'new'

@description('lakeMode=new: name of the lake account to create. Empty: stdl{unique suffix}.')
param lakeAccountName string = ''

@description('lakeMode=new: replication of the lake. The lake is the source of truth: geo-redundant by default.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param lakeSkuName string = 'Standard_GRS'

@description('lakeMode=existing: name of your ADLS Gen2 (or blob) storage account.')
param existingLakeAccountName string = ''

@description('lakeMode=existing: resource group of that account. Empty: this deployment\'s resource group.')
param existingLakeResourceGroup string = ''

@description('lakeMode=existing: name of an Event Grid system topic that already exists on that account (Azure allows one per account). Empty: create one.')
param existingLakeSystemTopicName string = ''

@description('File system (container) of the lake that holds AHDS/{workspace}/dicom/{service}/. Created when lakeMode=new; must exist when lakeMode=existing.')
@minLength(3)
@maxLength(63)
param lakeFileSystemName string = 'dicom'

@description('{workspace} in AHDS/{workspace}/dicom/{service}/.')
@minLength(1)
param dicomWorkspace string = 'default'

@description('{service} in AHDS/{workspace}/dicom/{service}/.')
@minLength(1)
param dicomService string = 'dicom'

@description('lakeMode=new: lifecycle rule that moves block blobs under {fileSystem}/AHDS/ to this online tier lifecycleDays after their last modification. Empty: none (everything stays Hot). Archive is not offered: archived instances cannot be retrieved until rehydrated.')
@allowed([
  ''
  'Cool'
  'Cold'
])
param lifecycleTier string = ''

@description('Days since last modification before the lifecycle rule applies.')
@minValue(1)
@maxValue(36500)
param lifecycleDays int = 30

@description('Days a deleted blob or container stays recoverable on the accounts this template creates (0: off).')
@minValue(0)
@maxValue(365)
param softDeleteDays int = 7

// ---------------------------------------------------------------------------------------------
// The index
// ---------------------------------------------------------------------------------------------

@description('Prefix of every index table name (DICOM_TABLE_PREFIX).')
@minLength(1)
@maxLength(40)
param dicomTablePrefix string = 'dicom'

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

@description('Maximum number of Flex Consumption instances.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory per Flex Consumption instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Largest HTTP request body the Functions host accepts, in bytes (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT). Default 4 GiB, for large STOW requests streamed by the HTTP streams extension.')
@minValue(1048576)
param requestBodySizeLimitBytes int = 4294967296

@description('Send telemetry to Application Insights with Entra ID (local auth off) and grant the app Monitoring Metrics Publisher on it.')
param appInsightsEntraAuth bool = true

@description('Days Log Analytics keeps logs.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Create the two Event Grid subscriptions (blob created / deleted in the contract folder) to the app. Needs the code deployed first: run `azd up`, then `azd env set DEPLOY_EVENT_SUBSCRIPTIONS true` and `azd provision`.')
param deployEventSubscriptions bool = false

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var token = toLower(uniqueString(resourceGroup().id, environmentName, location))
var allTags = union(tags, {
  'azd-env-name': environmentName
})
var appName = empty(functionAppName) ? 'func-dicom-${token}' : functionAppName
var planName = 'plan-dicom-${token}'
var hostStorageName = 'stfn${token}'
var indexStorageName = 'stix${token}'
var logAnalyticsName = 'log-dicom-${token}'
var appInsightsName = 'appi-dicom-${token}'
var systemTopicName = 'evgt-dicom-lake-${token}'
var deploymentContainerName = 'app-package'

var useExistingLake = lakeMode == 'existing'
var lakeName = useExistingLake ? existingLakeAccountName : (empty(lakeAccountName) ? 'stdl${token}' : lakeAccountName)
var lakeResourceGroupName = useExistingLake && !empty(existingLakeResourceGroup) ? existingLakeResourceGroup : resourceGroup().name
var storageSuffix = environment().suffixes.storage

// Built-in roles. These are the only roles this template assigns, all to the app's identity.
var roleStorageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var roleStorageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var roleStorageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var roleStorageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var roleMonitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

// ---------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    tags: allTags
    logAnalyticsName: logAnalyticsName
    appInsightsName: appInsightsName
    retentionInDays: logRetentionDays
    disableLocalAuth: appInsightsEntraAuth
  }
}

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

// Host storage (AzureWebJobsStorage): runtime state, timer leases, blob-trigger receipts and
// poison queue, and the Flex deployment package container.
module hostStorage 'modules/storageAccount.bicep' = {
  name: 'host-storage'
  params: {
    name: hostStorageName
    location: location
    tags: allTags
    skuName: 'Standard_LRS'
    containerNames: [
      deploymentContainerName
    ]
    softDeleteDays: softDeleteDays
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

// The index gets its own account rather than sharing the host account:
// - the Table service's scalability target (20,000 transactions/s) is per account; the index is the
//   hot path of every QIDO/STOW/DELETE and must not compete with the host's queue/blob traffic;
// - the index can be dropped and rebuilt from the lake (reindex) without touching runtime state;
// - its diagnostics, RBAC (Table Data Contributor only) and replication are independent.
// It costs nothing extra: Table Storage is billed per GB and per transaction, not per account.
module indexStorage 'modules/storageAccount.bicep' = {
  name: 'index-storage'
  params: {
    name: indexStorageName
    location: location
    tags: allTags
    skuName: 'Standard_LRS'
    softDeleteDays: softDeleteDays
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

// A new lake: StorageV2 with hierarchical namespace (ADLS Gen2) and the file system.
module lake 'modules/storageAccount.bicep' = if (!useExistingLake) {
  name: 'lake-storage'
  params: {
    name: lakeName
    location: location
    tags: allTags
    skuName: lakeSkuName
    isHnsEnabled: true
    containerNames: [
      lakeFileSystemName
    ]
    softDeleteDays: softDeleteDays
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
    lifecycleTier: lifecycleTier
    lifecycleDays: lifecycleDays
    lifecycleContainer: lakeFileSystemName
  }
}

// ---------------------------------------------------------------------------------------------
// The function app
// ---------------------------------------------------------------------------------------------

module functionApp 'modules/functionApp.bicep' = {
  name: 'function-app'
  params: {
    location: location
    tags: allTags
    planName: planName
    functionAppName: appName
    hostStorageAccountName: hostStorage.outputs.name
    deploymentContainerName: deploymentContainerName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    requestBodySizeLimitBytes: requestBodySizeLimitBytes
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    appInsightsEntraAuth: appInsightsEntraAuth
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
    lakeBlobServiceUri: 'https://${lakeName}.blob.${storageSuffix}'
    lakeDfsServiceUri: 'https://${lakeName}.dfs.${storageSuffix}'
    indexTableServiceUri: indexStorage.outputs.tableServiceUri
    fileSystemName: lakeFileSystemName
    dicomWorkspace: dicomWorkspace
    dicomService: dicomService
    dicomTablePrefix: dicomTablePrefix
  }
}

// ---------------------------------------------------------------------------------------------
// Role assignments (data plane only, to the app's system-assigned identity)
// ---------------------------------------------------------------------------------------------

// Host storage: Blob Data Owner (deployment package, blob-trigger receipts and leases) and Queue
// Data Contributor (host queues, blob-trigger poison queue). The index does not live here, so no
// Table role on the host account.
module hostStorageRoles 'modules/storageRoleAssignments.bicep' = {
  name: 'host-storage-roles'
  params: {
    storageAccountName: hostStorage.outputs.name
    principalId: functionApp.outputs.principalId
    roleDefinitionIds: [
      roleStorageBlobDataOwner
      roleStorageQueueDataContributor
    ]
  }
}

// Index: Table Data Contributor.
module indexStorageRoles 'modules/storageRoleAssignments.bicep' = {
  name: 'index-storage-roles'
  params: {
    storageAccountName: indexStorage.outputs.name
    principalId: functionApp.outputs.principalId
    roleDefinitionIds: [
      roleStorageTableDataContributor
    ]
  }
}

// Lake: Blob Data Contributor on the lake account, deployed in the lake's resource group (a
// bring-your-own lake may live elsewhere). Revoking access = deleting this one assignment.
module lakeRoles 'modules/storageRoleAssignments.bicep' = {
  name: 'lake-roles-${token}'
  scope: resourceGroup(lakeResourceGroupName)
  params: {
    storageAccountName: lakeName
    principalId: functionApp.outputs.principalId
    roleDefinitionIds: [
      roleStorageBlobDataContributor
    ]
  }
  dependsOn: [
    lake
  ]
}

// Application Insights with Entra-only ingestion: Monitoring Metrics Publisher on the component.
resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource appInsightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (appInsightsEntraAuth) {
  name: guid(resourceGroup().id, appInsightsName, appName, roleMonitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleMonitoringMetricsPublisher)
    principalId: functionApp.outputs.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    monitoring
  ]
}

// ---------------------------------------------------------------------------------------------
// Event Grid: lake changes made outside the API reach the index
// ---------------------------------------------------------------------------------------------

module lakeEvents 'modules/eventGrid.bicep' = {
  name: 'lake-events-${token}'
  scope: resourceGroup(lakeResourceGroupName)
  params: {
    lakeAccountName: lakeName
    lakeLocation: lakeRoles.outputs.location
    tags: allTags
    systemTopicName: systemTopicName
    subscriptionSuffix: token
    existingSystemTopicName: existingLakeSystemTopicName
    functionAppId: functionApp.outputs.id
    functionAppHostName: functionApp.outputs.defaultHostName
    fileSystemName: lakeFileSystemName
    dicomWorkspace: dicomWorkspace
    dicomService: dicomService
    deploySubscriptions: deployEventSubscriptions
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs (azd stores them in the environment's .env)
// ---------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output DICOMWEB_URL string = 'https://${functionApp.outputs.defaultHostName}/v2'
output DICOM_LAKE_ACCOUNT string = lakeName
output DICOM_LAKE_RESOURCE_GROUP string = lakeResourceGroupName
output DICOM_LAKE_FILESYSTEM string = lakeFileSystemName
output DICOM_LAKE_PREFIX string = 'AHDS/${dicomWorkspace}/dicom/${dicomService}/'
output DICOM_INDEX_ACCOUNT string = indexStorage.outputs.name
output DICOM_EVENT_SUBSCRIPTIONS bool = deployEventSubscriptions
