// Command pulumi_config_check applies the Pulumi engine's own config rule to a project
// file and a stack file, and prints the outcome as JSON: the error `pulumi up` would
// stop with, or the merged config the program would receive.
//
// Usage: pulumi_config_check PROJECT_FILE STACK_FILE STACK_NAME
//
// It calls the engine's functions (workspace.LoadProject, LoadProjectStack and
// ValidateStackConfigAndApplyProjectConfig, the call cmd/pulumi/operations/up.go
// makes) so tests can hold tests/support/engine_config.py to the engine's answers.
// Encrypted values are not decrypted (a no-op decrypter): their ciphertext stands in.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	pkgWorkspace "github.com/pulumi/pulumi/pkg/v3/workspace"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag/colors"
	"github.com/pulumi/pulumi/sdk/v3/go/common/esc"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/config"
	"github.com/pulumi/pulumi/sdk/v3/go/common/workspace"
)

type value struct {
	Text   string `json:"text"`
	Secure bool   `json:"secure"`
	Object bool   `json:"object"`
}

type outcome struct {
	Error  *string          `json:"error"`
	Config map[string]value `json:"config"`
}

func check(projectFile, stackFile, stackName string) outcome {
	fail := func(err error) outcome {
		text := err.Error()
		return outcome{Error: &text}
	}
	project, err := workspace.LoadProject(projectFile)
	if err != nil {
		return fail(err)
	}
	sink := diag.DefaultSink(io.Discard, io.Discard, diag.FormatOptions{Color: colors.Never})
	stack, err := workspace.LoadProjectStack(sink, project, stackFile)
	if err != nil {
		return fail(err)
	}
	err = pkgWorkspace.ValidateStackConfigAndApplyProjectConfig(
		context.Background(), stackName, project, esc.Value{}, stack.Config,
		config.NopEncrypter, config.NopDecrypter,
	)
	if err != nil {
		// The wrapping cmd/pulumi/operations/up.go adds.
		return fail(fmt.Errorf("validating stack config: %w", err))
	}
	merged := map[string]value{}
	for key, stackValue := range stack.Config {
		text, err := stackValue.Value(config.NopDecrypter)
		if err != nil {
			return fail(err)
		}
		merged[key.String()] = value{Text: text, Secure: stackValue.Secure(), Object: stackValue.Object()}
	}
	return outcome{Config: merged}
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: pulumi_config_check PROJECT_FILE STACK_FILE STACK_NAME")
		os.Exit(2)
	}
	encoded, err := json.Marshal(check(os.Args[1], os.Args[2], os.Args[3]))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(encoded))
}
