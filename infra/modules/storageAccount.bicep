// One StorageV2 account created by this deployment (host storage, index storage, or a new lake).
// Secure defaults for every account we create: HTTPS only, TLS 1.2, no public blob access,
// no Shared Key (the app authenticates with its managed identity everywhere), no local users/SFTP,
// infrastructure (double) encryption, diagnostic logs of the blob and table services to Log Analytics.

@description('Storage account name (3-24 lowercase letters and digits, globally unique).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Replication. The lake is the source of truth, so main.bicep defaults it to geo-redundant storage.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_LRS'

@description('Hierarchical namespace (ADLS Gen2). Only at creation time.')
param isHnsEnabled bool = false

@description('Blob containers (file systems) to create.')
param containerNames array = []

@description('Days a deleted blob or container stays recoverable (0 turns soft delete off).')
@minValue(0)
@maxValue(365)
param softDeleteDays int = 7

@description('Resource ID of the Log Analytics workspace that receives the diagnostic logs.')
param logAnalyticsWorkspaceId string

@description('Lifecycle management: move block blobs under {lifecycleContainer}/AHDS/ to this tier after lifecycleDays days since modification. Empty: no rule. Archive is deliberately not allowed (archived instances cannot be retrieved).')
@allowed([
  ''
  'Cool'
  'Cold'
])
param lifecycleTier string = ''

@description('Days since last modification before the lifecycle rule moves a blob.')
@minValue(1)
@maxValue(36500)
param lifecycleDays int = 30

@description('File system (container) whose AHDS/ prefix the lifecycle rule covers.')
param lifecycleContainer string = ''

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    // checkov:skip=CKV_AZURE_35: The Flex Consumption app reaches storage over the public endpoint (no VNet integration in this template) and Event Grid must reach the lake; access is Entra-only (Shared Key off) and governed by data-plane RBAC.
    // checkov:skip=CKV_AZURE_59: Same reason as CKV_AZURE_35: public network access stays enabled for the serverless app; anonymous and Shared Key access are off, so every request needs an Entra token with a data role.
    // checkov:skip=CKV_AZURE_206: Replication is a parameter: main.bicep creates the lake geo-redundant (Standard_GRS by default) because it is the source of truth; the host account (transient runtime state, deployment package) and the index account (rebuildable from the lake by reindex) use Standard_LRS on purpose.
    accessTier: 'Hot'
    isHnsEnabled: isHnsEnabled
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: softDeleteDays > 0
      days: softDeleteDays > 0 ? softDeleteDays : 1
    }
    containerDeleteRetentionPolicy: {
      enabled: softDeleteDays > 0
      days: softDeleteDays > 0 ? softDeleteDays : 1
    }
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for containerName in containerNames: {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}]

// Lifecycle: only block blobs under {container}/AHDS/, only to online tiers (Cool or Cold).
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (!empty(lifecycleTier)) {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'dicom-to-${toLower(empty(lifecycleTier) ? 'none' : lifecycleTier)}'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${lifecycleContainer}/AHDS/'
              ]
            }
            actions: {
              baseBlob: lifecycleTier == 'Cool' ? {
                tierToCool: {
                  daysAfterModificationGreaterThan: lifecycleDays
                }
              } : {
                tierToCold: {
                  daysAfterModificationGreaterThan: lifecycleDays
                }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    containers
  ]
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: blobService
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
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: tableService
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
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

output id string = account.id
output name string = account.name
output blobServiceUri string = 'https://${account.name}.blob.${environment().suffixes.storage}'
output dfsServiceUri string = 'https://${account.name}.dfs.${environment().suffixes.storage}'
output queueServiceUri string = 'https://${account.name}.queue.${environment().suffixes.storage}'
output tableServiceUri string = 'https://${account.name}.table.${environment().suffixes.storage}'
