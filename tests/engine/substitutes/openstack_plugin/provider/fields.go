package provider

import "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"

// resourceFields holds the attribute names the SDK spells otherwise than the
// bridge's default camelCase (with plural lists).
var resourceFields = map[string]map[string]*tfbridge.SchemaInfo{
	"openstack_networking_subnet_v2": {
		"allocation_pool": {Name: "allocationPools"},
	},
	"openstack_orchestration_stack_v1": {
		"outputs": {Name: "StackOutputs"},
	},
	"openstack_lb_members_v2": {
		// Only the C# SDK differs here; kept so the schema says the same.
		"member": {CSharpName: "MemberList"},
	},
}
