package provider

import (
	"sort"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge/tokens"
	pulumitokens "github.com/pulumi/pulumi/sdk/v3/go/common/tokens"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/contract"
)

const packageName = "openstack"

// standardToken builds "openstack:<module>/<name with a lower first letter>:<name>",
// the shape of every token in the package.
var standardToken = tokens.MakeStandard(packageName)

// tfModules maps the word after "openstack_" in a Terraform type name to the
// Pulumi module it lands in; a type whose word is not listed lands in
// "index". The bridge's default then names the member after the rest of the
// type name, version suffix included: openstack_blockstorage_qos_v3 becomes
// openstack:blockstorage/qosV3:QosV3.
var tfModules = map[string]string{
	"bgpvpn":           "bgpvpn",
	"blockstorage":     "blockstorage",
	"compute":          "compute",
	"containerinfra":   "containerinfra",
	"dns":              "dns",
	"fw":               "firewall",
	"identity":         "identity",
	"images":           "images",
	"keymanager":       "keymanager",
	"lb":               "loadbalancer",
	"loadbalancer":     "loadbalancer",
	"networking":       "networking",
	"objectstorage":    "objectstorage",
	"orchestration":    "orchestration",
	"sharedfilesystem": "sharedfilesystem",
	"vpnaas":           "vpnaas",
}

func tokenStrategy() tokens.Strategy {
	return tokens.MappedModules("openstack_", "index", tfModules, standardToken)
}

// member is a Pulumi module and member name, joined by standardToken.
type member struct{ module, name string }

// resourceNames lists the resources whose token is not the default one:
// pulumi-openstack 5.x names most long-standing resources without their
// version suffix and with its own word breaks (SecGroup, FloatingIp, ...).
// Each row is the token the Python SDK pulumi_openstack 5.5.3 uses for that
// Terraform resource.
var resourceNames = map[string]member{
	"openstack_blockstorage_quotaset_v3":                 {"blockstorage", "QuoteSetV3"},
	"openstack_blockstorage_volume_attach_v3":            {"blockstorage", "VolumeAttach"},
	"openstack_blockstorage_volume_v3":                   {"blockstorage", "Volume"},
	"openstack_compute_flavor_access_v2":                 {"compute", "FlavorAccess"},
	"openstack_compute_flavor_v2":                        {"compute", "Flavor"},
	"openstack_compute_instance_v2":                      {"compute", "Instance"},
	"openstack_compute_interface_attach_v2":              {"compute", "InterfaceAttach"},
	"openstack_compute_keypair_v2":                       {"compute", "Keypair"},
	"openstack_compute_quotaset_v2":                      {"compute", "QuotaSetV2"},
	"openstack_compute_servergroup_v2":                   {"compute", "ServerGroup"},
	"openstack_compute_volume_attach_v2":                 {"compute", "VolumeAttach"},
	"openstack_containerinfra_cluster_v1":                {"containerinfra", "Cluster"},
	"openstack_containerinfra_clustertemplate_v1":        {"containerinfra", "ClusterTemplate"},
	"openstack_containerinfra_nodegroup_v1":              {"containerinfra", "NodeGroup"},
	"openstack_db_configuration_v1":                      {"database", "Configuration"},
	"openstack_db_database_v1":                           {"database", "Database"},
	"openstack_db_instance_v1":                           {"database", "Instance"},
	"openstack_db_user_v1":                               {"database", "User"},
	"openstack_dns_recordset_v2":                         {"dns", "RecordSet"},
	"openstack_dns_transfer_accept_v2":                   {"dns", "TransferAccept"},
	"openstack_dns_transfer_request_v2":                  {"dns", "TransferRequest"},
	"openstack_dns_zone_v2":                              {"dns", "Zone"},
	"openstack_identity_application_credential_v3":       {"identity", "ApplicationCredential"},
	"openstack_identity_inherit_role_assignment_v3":      {"identity", "InheritRoleAssignment"},
	"openstack_identity_project_v3":                      {"identity", "Project"},
	"openstack_identity_role_assignment_v3":              {"identity", "RoleAssignment"},
	"openstack_identity_role_v3":                         {"identity", "Role"},
	"openstack_identity_user_v3":                         {"identity", "User"},
	"openstack_images_image_access_accept_v2":            {"images", "ImageAccessAccept"},
	"openstack_images_image_access_v2":                   {"images", "ImageAccess"},
	"openstack_images_image_v2":                          {"images", "Image"},
	"openstack_lb_l7policy_v2":                           {"loadbalancer", "L7PolicyV2"},
	"openstack_lb_l7rule_v2":                             {"loadbalancer", "L7RuleV2"},
	"openstack_lb_listener_v2":                           {"loadbalancer", "Listener"},
	"openstack_lb_loadbalancer_v2":                       {"loadbalancer", "LoadBalancer"},
	"openstack_lb_member_v2":                             {"loadbalancer", "Member"},
	"openstack_lb_members_v2":                            {"loadbalancer", "Members"},
	"openstack_lb_monitor_v2":                            {"loadbalancer", "Monitor"},
	"openstack_lb_pool_v2":                               {"loadbalancer", "Pool"},
	"openstack_lb_quota_v2":                              {"loadbalancer", "Quota"},
	"openstack_networking_addressscope_v2":               {"networking", "AddressScope"},
	"openstack_networking_floatingip_associate_v2":       {"networking", "FloatingIpAssociate"},
	"openstack_networking_floatingip_v2":                 {"networking", "FloatingIp"},
	"openstack_networking_network_v2":                    {"networking", "Network"},
	"openstack_networking_port_secgroup_associate_v2":    {"networking", "PortSecGroupAssociate"},
	"openstack_networking_port_v2":                       {"networking", "Port"},
	"openstack_networking_portforwarding_v2":             {"networking", "PortForwardingV2"},
	"openstack_networking_qos_bandwidth_limit_rule_v2":   {"networking", "QosBandwidthLimitRule"},
	"openstack_networking_qos_dscp_marking_rule_v2":      {"networking", "QosDscpMarkingRule"},
	"openstack_networking_qos_minimum_bandwidth_rule_v2": {"networking", "QosMinimumBandwidthRule"},
	"openstack_networking_qos_policy_v2":                 {"networking", "QosPolicy"},
	"openstack_networking_router_interface_v2":           {"networking", "RouterInterface"},
	"openstack_networking_router_route_v2":               {"networking", "RouterRoute"},
	"openstack_networking_router_v2":                     {"networking", "Router"},
	"openstack_networking_secgroup_rule_v2":              {"networking", "SecGroupRule"},
	"openstack_networking_secgroup_v2":                   {"networking", "SecGroup"},
	"openstack_networking_subnet_route_v2":               {"networking", "SubnetRoute"},
	"openstack_networking_subnet_v2":                     {"networking", "Subnet"},
	"openstack_networking_subnetpool_v2":                 {"networking", "SubnetPool"},
	"openstack_networking_trunk_v2":                      {"networking", "Trunk"},
	"openstack_objectstorage_container_v1":               {"objectstorage", "Container"},
	"openstack_objectstorage_object_v1":                  {"objectstorage", "ContainerObject"},
	"openstack_objectstorage_tempurl_v1":                 {"objectstorage", "TempUrl"},
	"openstack_sharedfilesystem_securityservice_v2":      {"sharedfilesystem", "SecurityService"},
	"openstack_sharedfilesystem_share_access_v2":         {"sharedfilesystem", "ShareAccess"},
	"openstack_sharedfilesystem_share_v2":                {"sharedfilesystem", "Share"},
	"openstack_sharedfilesystem_sharenetwork_v2":         {"sharedfilesystem", "ShareNetwork"},
	"openstack_vpnaas_endpoint_group_v2":                 {"vpnaas", "EndpointGroup"},
	"openstack_vpnaas_ike_policy_v2":                     {"vpnaas", "IkePolicy"},
	"openstack_vpnaas_ipsec_policy_v2":                   {"vpnaas", "IpSecPolicy"},
	"openstack_vpnaas_service_v2":                        {"vpnaas", "Service"},
	"openstack_vpnaas_site_connection_v2":                {"vpnaas", "SiteConnection"},
}

// dataSourceNames lists the data sources whose function token is not the
// default "get" + rest of the type name, as the Python SDK names them.
var dataSourceNames = map[string]member{
	"openstack_compute_availability_zones_v2":            {"compute", "getAvailabilityZones"},
	"openstack_compute_flavor_v2":                        {"compute", "getFlavor"},
	"openstack_compute_keypair_v2":                       {"compute", "getKeypair"},
	"openstack_compute_quotaset_v2":                      {"compute", "getQuotaSetV2"},
	"openstack_containerinfra_cluster_v1":                {"containerinfra", "getCluster"},
	"openstack_containerinfra_clustertemplate_v1":        {"containerinfra", "getClusterTemplate"},
	"openstack_containerinfra_nodegroup_v1":              {"containerinfra", "getNodeGroup"},
	"openstack_dns_zone_v2":                              {"dns", "getDnsZone"},
	"openstack_identity_auth_scope_v3":                   {"identity", "getAuthScope"},
	"openstack_identity_endpoint_v3":                     {"identity", "getEndpoint"},
	"openstack_identity_group_v3":                        {"identity", "getGroup"},
	"openstack_identity_project_v3":                      {"identity", "getProject"},
	"openstack_identity_role_v3":                         {"identity", "getRole"},
	"openstack_identity_service_v3":                      {"identity", "getService"},
	"openstack_identity_user_v3":                         {"identity", "getUser"},
	"openstack_images_image_ids_v2":                      {"images", "getImageIds"},
	"openstack_images_image_v2":                          {"images", "getImage"},
	"openstack_keymanager_container_v1":                  {"keymanager", "getContainer"},
	"openstack_keymanager_secret_v1":                     {"keymanager", "getSecret"},
	"openstack_loadbalancer_flavor_v2":                   {"loadbalancer", "getLbFlavorDeprecated"},
	"openstack_networking_addressscope_v2":               {"networking", "getAddressScope"},
	"openstack_networking_floatingip_v2":                 {"networking", "getFloatingIp"},
	"openstack_networking_network_v2":                    {"networking", "getNetwork"},
	"openstack_networking_port_ids_v2":                   {"networking", "getPortIds"},
	"openstack_networking_port_v2":                       {"networking", "getPort"},
	"openstack_networking_qos_bandwidth_limit_rule_v2":   {"networking", "getQosBandwidthLimitRule"},
	"openstack_networking_qos_dscp_marking_rule_v2":      {"networking", "getQosDscpMarkingRule"},
	"openstack_networking_qos_minimum_bandwidth_rule_v2": {"networking", "getQosMinimumBandwidthRule"},
	"openstack_networking_qos_policy_v2":                 {"networking", "getQosPolicy"},
	"openstack_networking_router_v2":                     {"networking", "getRouter"},
	"openstack_networking_secgroup_v2":                   {"networking", "getSecGroup"},
	"openstack_networking_subnet_v2":                     {"networking", "getSubnet"},
	"openstack_networking_subnetpool_v2":                 {"networking", "getSubnetPool"},
	"openstack_networking_trunk_v2":                      {"networking", "getTrunk"},
	"openstack_sharedfilesystem_availability_zones_v2":   {"sharedfilesystem", "getAvailbilityZones"},
	"openstack_sharedfilesystem_share_v2":                {"sharedfilesystem", "getShare"},
	"openstack_sharedfilesystem_sharenetwork_v2":         {"sharedfilesystem", "getShareNetwork"},
	"openstack_sharedfilesystem_snapshot_v2":             {"sharedfilesystem", "getSnapshot"},
	// The SDK exposes this data source as a function without the "get" prefix.
	"openstack_workflow_workflow_v2": {"index", "WorkflowWorkflowV2"},
}

// legacyResourceTokens and legacyDataSourceTokens are tokens these types had
// earlier in 5.x, before their module was known. The SDK still carries them
// as deprecated copies, and state written under them must keep working.
var legacyResourceTokens = map[string]member{
	"openstack_bgpvpn_network_associate_v2": {"index", "BgpvpnNetworkAssociateV2"},
	"openstack_bgpvpn_port_associate_v2":    {"index", "BgpvpnPortAssociateV2"},
	"openstack_bgpvpn_router_associate_v2":  {"index", "BgpvpnRouterAssociateV2"},
	"openstack_bgpvpn_v2":                   {"index", "BgpvpnV2"},
	"openstack_lb_flavorprofile_v2":         {"index", "LbFlavorprofileV2"},
	"openstack_lb_loadbalancer_v2":          {"index", "LbLoadbalancerV2"},
}

var legacyDataSourceTokens = map[string]member{
	"openstack_fw_group_v2":  {"index", "getFwGroupV2"},
	"openstack_fw_policy_v2": {"index", "getFwPolicyV2"},
	"openstack_fw_rule_v2":   {"index", "getFwRuleV2"},
}

func (m member) token() string {
	tok, err := standardToken(m.module, m.name)
	contract.AssertNoErrorf(err, "token for %v", m)
	return tok
}

func resourceOverrides() map[string]*tfbridge.ResourceInfo {
	infos := map[string]*tfbridge.ResourceInfo{}
	for tf, m := range resourceNames {
		infos[tf] = &tfbridge.ResourceInfo{Tok: pulumitokens.Type(m.token())}
	}
	for tf, fields := range resourceFields {
		if infos[tf] == nil {
			infos[tf] = &tfbridge.ResourceInfo{}
		}
		infos[tf].Fields = fields
	}
	return infos
}

func dataSourceOverrides() map[string]*tfbridge.DataSourceInfo {
	infos := map[string]*tfbridge.DataSourceInfo{}
	for tf, m := range dataSourceNames {
		infos[tf] = &tfbridge.DataSourceInfo{Tok: pulumitokens.ModuleMember(m.token())}
	}
	return infos
}

// applyLegacyTokens adds each legacy token as a deprecated copy of its type,
// the way the bridge's auto-aliasing does from a provider's release history.
func applyLegacyTokens(prov *tfbridge.ProviderInfo) {
	for _, tf := range sortedKeys(legacyResourceTokens) {
		current := prov.Resources[tf]
		legacy := pulumitokens.Type(legacyResourceTokens[tf].token())
		prov.RenameResourceWithAlias(tf, legacy, current.Tok,
			legacy.Module().Name().String(), current.Tok.Module().Name().String(), current)
	}
	for _, tf := range sortedKeys(legacyDataSourceTokens) {
		current := prov.DataSources[tf]
		legacy := pulumitokens.ModuleMember(legacyDataSourceTokens[tf].token())
		prov.RenameDataSource(tf, legacy, current.Tok,
			legacy.Module().Name().String(), current.Tok.Module().Name().String(), current)
	}
}

func sortedKeys(m map[string]member) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
