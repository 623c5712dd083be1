// Command pulumi-resource-command is the resource plugin for the Python SDK
// pulumi_command 1.2.1: command:local:Command, command:local:run,
// command:remote:Command, command:remote:CopyToRemote and
// command:remote:CopyFile, behaving as pulumi-command 1.2.1 does.
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
