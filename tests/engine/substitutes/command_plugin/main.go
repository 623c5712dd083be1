// Command pulumi-resource-command is the resource plugin for the Python SDK
// pulumi_command 1.2.1: command:local:Command, command:local:run,
// command:remote:Command, command:remote:CopyToRemote and
// command:remote:CopyFile, behaving as pulumi-command 1.2.1 does.
//
// A substitute, written for this project: the Go module proxy refuses
// upstream's module (github.com/pulumi/pulumi-command/provider, 403 for its
// versions, 404 for v1.2.1), so none of upstream's code is built here. Its Go
// tests and tests/engine/test_command_plugin.py hold it to upstream (README.md).
package main

import (
	"fmt"
	"os"
	"strings"

	pulumiprovider "github.com/pulumi/pulumi/sdk/v3/go/pulumi/provider"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"

	"chipersist.test/pulumi-resource-command/internal/provider"
)

// version is stamped at build time: -ldflags "-X main.version=1.2.1".
var version = "0.0.0-dev"

func main() {
	v := strings.TrimPrefix(version, "v")
	err := pulumiprovider.Main("command", func(host *pulumiprovider.HostClient) (pulumirpc.ResourceProviderServer, error) {
		return provider.New(v, host), nil
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %s", err.Error())
		os.Exit(1)
	}
}
