// Package local runs command:local:Command and command:local:run on the
// machine that runs the engine, as pulumi-command 1.2.1 does.
//
// The input types are decoded with the Pulumi SDK's mapper; their package
// and type names are part of the messages the mapper gives for bad inputs
// ("Missing required field 'command' on 'local.RunInputs'"), which is why
// they carry the names the upstream provider's types have.
package local

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"runtime"
	"strings"

	"github.com/gobwas/glob"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"

	"chipersist.test/pulumi-resource-command/internal/hostlog"
)

// Environment variables that carry the previous run's output.
const (
	PreviousStdoutVariable = "PULUMI_COMMAND_STDOUT"
	PreviousStderrVariable = "PULUMI_COMMAND_STDERR"
)

// Logging says which of the command's streams go to the engine's log.
type Logging string

// ShouldLogStdout is true unless logging names another stream or none;
// unset means both.
func (l *Logging) ShouldLogStdout() bool {
	return l == nil || *l == "stdout" || *l == "stdoutAndStderr"
}

// ShouldLogStderr is the same for stderr.
func (l *Logging) ShouldLogStderr() bool {
	return l == nil || *l == "stderr" || *l == "stdoutAndStderr"
}

// BaseInputs are the inputs a local command and local.run share.
type BaseInputs struct {
	Stdin                  *string            `pulumi:"stdin,optional"`
	Logging                *Logging           `pulumi:"logging,optional"`
	Interpreter            *[]string          `pulumi:"interpreter,optional"`
	Dir                    *string            `pulumi:"dir,optional"`
	Environment            *map[string]string `pulumi:"environment,optional"`
	AssetPaths             *[]string          `pulumi:"assetPaths,optional"`
	ArchivePaths           *[]string          `pulumi:"archivePaths,optional"`
	AddPreviousOutputInEnv *bool              `pulumi:"addPreviousOutputInEnv,optional"`
}

// CommandInputs are the inputs of command:local:Command.
type CommandInputs struct {
	Triggers *[]any  `pulumi:"triggers,optional"`
	Create   *string `pulumi:"create,optional"`
	Update   *string `pulumi:"update,optional"`
	Delete   *string `pulumi:"delete,optional"`
	BaseInputs
}

// RunInputs are the arguments of command:local:run.
type RunInputs struct {
	BaseInputs
	Command string `pulumi:"command"`
}

// Result is what a run leaves in the resource's outputs.
type Result struct {
	Stdout  string
	Stderr  string
	Assets  map[string]*resource.Asset // nil unless assetPaths was given
	Archive *resource.Archive          // nil unless archivePaths was given
}

// Run runs command with in's settings. previous is the output of the last
// create or update (zero for a create): it feeds PULUMI_COMMAND_STDOUT and
// PULUMI_COMMAND_STDERR, and its assets and archive are kept when this run
// does not collect new ones.
func Run(ctx context.Context, command string, in BaseInputs, previous Result) (Result, error) {
	out := previous
	var args []string
	if in.Interpreter != nil && len(*in.Interpreter) > 0 {
		args = append(args, *in.Interpreter...)
	} else if runtime.GOOS == "windows" {
		args = []string{"cmd", "/C"}
	} else {
		args = []string{"/bin/sh", "-c"}
	}
	args = append(args, command)

	var stdout, stderr, combined bytes.Buffer
	combinedWriter := &hostlog.LockedWriter{W: &combined}
	logReader, logWriter := io.Pipe()

	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	stdoutWriters := []io.Writer{&stdout, combinedWriter}
	if in.Logging.ShouldLogStdout() {
		stdoutWriters = append(stdoutWriters, logWriter)
	}
	cmd.Stdout = io.MultiWriter(stdoutWriters...)
	stderrWriters := []io.Writer{&stderr, combinedWriter}
	if in.Logging.ShouldLogStderr() {
		stderrWriters = append(stderrWriters, logWriter)
	}
	cmd.Stderr = io.MultiWriter(stderrWriters...)

	if in.Dir != nil {
		cmd.Dir = *in.Dir
	} else {
		wd, err := os.Getwd()
		if err != nil {
			return out, err
		}
		cmd.Dir = wd
	}

	cmd.Env = os.Environ()
	if in.Environment != nil {
		for name, value := range *in.Environment {
			cmd.Env = append(cmd.Env, name+"="+value)
		}
	}
	if in.AddPreviousOutputInEnv == nil || *in.AddPreviousOutputInEnv {
		if previous.Stdout != "" {
			cmd.Env = append(cmd.Env, PreviousStdoutVariable+"="+previous.Stdout)
		}
		if previous.Stderr != "" {
			cmd.Env = append(cmd.Env, PreviousStderrVariable+"="+previous.Stderr)
		}
	}
	if in.Stdin != nil && len(*in.Stdin) > 0 {
		cmd.Stdin = strings.NewReader(*in.Stdin)
	}

	logged := make(chan struct{})
	go hostlog.StreamLines(ctx, logReader, logged)

	err := cmd.Start()
	if err == nil {
		err = cmd.Wait()
	}
	logWriter.Close()
	<-logged

	if err != nil {
		return out, fmt.Errorf("%w: running %q:\n%s", err, command, combined.String())
	}

	if in.AssetPaths != nil {
		assets, err := globAssets(cmd.Dir, *in.AssetPaths)
		if err != nil {
			return out, err
		}
		out.Assets = assets
	}
	if in.ArchivePaths != nil {
		assets, err := globAssets(cmd.Dir, *in.ArchivePaths)
		if err != nil {
			return out, err
		}
		members := make(map[string]any, len(assets))
		for name, asset := range assets {
			members[name] = asset
		}
		archive, err := resource.NewAssetArchive(members)
		if err != nil {
			return out, err
		}
		out.Archive = archive
	}

	out.Stdout = strings.TrimSuffix(stdout.String(), "\n")
	out.Stderr = strings.TrimSuffix(stderr.String(), "\n")
	return out, nil
}

// globAssets returns the files under dir (paths relative to it, with "/")
// that the patterns select: patterns apply in order, a leading "!" removes
// what earlier patterns added, "*" stops at "/" and "**" does not.
func globAssets(dir string, patterns []string) (map[string]*resource.Asset, error) {
	type rule struct {
		exclude bool
		glob    glob.Glob
	}
	rules := make([]rule, len(patterns))
	for i, pattern := range patterns {
		exclude := strings.HasPrefix(pattern, "!")
		compiled, err := glob.Compile(strings.TrimPrefix(pattern, "!"), '/')
		if err != nil {
			return nil, err
		}
		rules[i] = rule{exclude: exclude, glob: compiled}
	}

	assets := map[string]*resource.Asset{}
	err := fs.WalkDir(os.DirFS(dir), ".", func(name string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if entry.IsDir() {
			return nil
		}
		for _, r := range rules {
			if !r.glob.Match(name) {
				continue
			}
			if r.exclude {
				delete(assets, name)
				continue
			}
			asset, err := resource.NewPathAsset(path.Join(dir, name))
			if err != nil {
				return err
			}
			assets[name] = asset
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return assets, nil
}
