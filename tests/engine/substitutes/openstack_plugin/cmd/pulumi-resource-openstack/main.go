// Command pulumi-resource-openstack is the openstack resource plugin:
// terraform-provider-openstack served to the Pulumi engine by the Terraform
// bridge, described by this project's substitute for pulumi-openstack's
// provider package (../../provider; README.md says why and how it is held to
// upstream). The build places schema-embed.json and bridge-metadata.json, made
// by pulumi-tfgen-openstack, beside this file before compiling it.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"

	"chi-persist.invalid/tests/engine/substitutes/openstack_plugin/provider"
)

//go:embed schema-embed.json
var pulumiSchema []byte

//go:embed bridge-metadata.json
var bridgeMetadata []byte

func main() {
	tfbridge.Main("openstack", provider.Version, provider.Provider(provider.Version, bridgeMetadata), pulumiSchema)
}
