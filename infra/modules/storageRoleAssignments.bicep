// Data-plane role assignments for one principal on one storage account.
// Deployed as a module scoped to the account's resource group, so it also works for a
// bring-your-own lake that lives in another resource group than the app.

@description('Name of the storage account (in the resource group this module is deployed to).')
param storageAccountName string

@description('Object ID of the principal (the function app system-assigned identity).')
param principalId string

@description('Built-in role definition IDs (GUIDs) to assign at the account scope.')
param roleDefinitionIds array

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in roleDefinitionIds: {
  // Deterministic name: re-deploying is idempotent; deleting this assignment revokes the access.
  name: guid(account.id, principalId, roleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

// The account's region: the Event Grid system topic of a lake must be in the same region.
output location string = account.location
output id string = account.id
