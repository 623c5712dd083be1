// Command pulumi-tfgen-openstack writes the Pulumi schema and the bridge
// metadata of the openstack provider, which pulumi-resource-openstack embeds,
// from this project's substitute mapping (../../provider, README.md).
//
// Usage: pulumi-tfgen-openstack OUT_DIR TF_PROVIDER_SOURCE_DIR
//
// OUT_DIR receives schema.json (as tfgen writes it, without a version),
// schema-embed.json (the same with the version) and bridge-metadata.json.
// TF_PROVIDER_SOURCE_DIR is terraform-provider-openstack's module directory,
// whose docs/ give the schema its descriptions. The directory name of this
// command matters: the bridge tells build time from run time by it.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfgen"
	"github.com/spf13/afero"

	"chi-persist.invalid/tests/engine/substitutes/openstack_plugin/provider"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintf(os.Stderr, "usage: %s OUT_DIR TF_PROVIDER_SOURCE_DIR\n", filepath.Base(os.Args[0]))
		os.Exit(2)
	}
	if err := generate(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-tfgen-openstack: %v\n", err)
		os.Exit(1)
	}
}

func generate(outDir, sourceDir string) error {
	if provider.Version == "" {
		return fmt.Errorf("built without a version: link with -X .../provider.Version=<version>")
	}
	// tfgen starts from an empty history: nothing from an earlier run is read back.
	prov := provider.Provider(provider.Version, nil)
	prov.UpstreamRepoPath = sourceDir
	if err := prov.P.InternalValidate(); err != nil {
		return fmt.Errorf("the Terraform provider fails its own validation: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	generator, err := tfgen.NewGenerator(tfgen.GeneratorOptions{
		Package:      "openstack",
		Version:      provider.Version,
		Language:     tfgen.Schema,
		ProviderInfo: prov,
		Root:         afero.NewBasePathFs(afero.NewOsFs(), outDir),
		// Converting the docs' HCL examples needs the pulumi CLI and converter
		// plugins; the examples only decorate descriptions.
		SkipExamples: true,
	})
	if err != nil {
		return err
	}
	result, err := generator.Generate(context.Background())
	if err != nil {
		return err
	}
	spec := result.PackageSpec
	spec.Version = provider.Version
	embedded, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(outDir, "schema-embed.json"), embedded, 0o644)
}
