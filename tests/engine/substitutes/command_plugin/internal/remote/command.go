package remote

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"

	"chipersist.test/pulumi-resource-command/internal/hostlog"
)

// Environment variables that carry the previous run's output.
const (
	PreviousStdoutVariable = "PULUMI_COMMAND_STDOUT"
	PreviousStderrVariable = "PULUMI_COMMAND_STDERR"
)

// Output is what a run leaves in the resource's outputs.
type Output struct {
	Stdout string
	Stderr string
}

// Run runs command on the host of in.Connection in a new session of a new
// SSH connection. previous is the output of the last create or update (zero
// for a create); it is offered to the remote side as PULUMI_COMMAND_STDOUT
// and PULUMI_COMMAND_STDERR. On failure the previous output is returned.
//
// As upstream, the SSH connection is left open (only the session is
// closed) until the provider exits, and every environment variable goes
// through an SSH "env" request, which sshd refuses unless its AcceptEnv
// names the variable: a refused entry of environment fails the run, a
// refused PULUMI_COMMAND_* only logs a warning.
func Run(ctx context.Context, command string, in CommandInputs, previous Output) (Output, error) {
	client, err := in.Connection.Dial(ctx)
	if err != nil {
		return previous, err
	}
	session, err := client.NewSession()
	if err != nil {
		return previous, err
	}
	defer session.Close()

	for name, value := range in.Environment {
		if err := session.Setenv(name, value); err != nil {
			return previous, setenvFailed(ctx, diag.Error, name, err)
		}
	}
	if in.AddPreviousOutputInEnv == nil || *in.AddPreviousOutputInEnv {
		if previous.Stdout != "" {
			if err := session.Setenv(PreviousStdoutVariable, previous.Stdout); err != nil {
				_ = setenvFailed(ctx, diag.Warning, PreviousStdoutVariable, err)
			}
		}
		if previous.Stderr != "" {
			if err := session.Setenv(PreviousStderrVariable, previous.Stderr); err != nil {
				_ = setenvFailed(ctx, diag.Warning, PreviousStderrVariable, err)
			}
		}
	}

	if in.Stdin != nil && len(*in.Stdin) > 0 {
		session.Stdin = strings.NewReader(*in.Stdin)
	}

	var stdout, stderr, combined bytes.Buffer
	combinedWriter := &hostlog.LockedWriter{W: &combined}
	logReader, logWriter := io.Pipe()
	stdoutWriters := []io.Writer{&stdout, combinedWriter}
	if in.Logging.ShouldLogStdout() {
		stdoutWriters = append(stdoutWriters, logWriter)
	}
	session.Stdout = io.MultiWriter(stdoutWriters...)
	stderrWriters := []io.Writer{&stderr, combinedWriter}
	if in.Logging.ShouldLogStderr() {
		stderrWriters = append(stderrWriters, logWriter)
	}
	session.Stderr = io.MultiWriter(stderrWriters...)

	logged := make(chan struct{})
	go hostlog.StreamLines(ctx, logReader, logged)
	err = session.Run(command)
	logWriter.Close()
	<-logged

	if err != nil {
		return previous, fmt.Errorf("%w: running %q:\n%s", err, command, combined.String())
	}
	return Output{
		Stdout: strings.TrimSuffix(stdout.String(), "\n"),
		Stderr: strings.TrimSuffix(stderr.String(), "\n"),
	}, nil
}

// setenvFailed logs why an SSH env request was refused and returns the
// error the resource fails with.
func setenvFailed(ctx context.Context, severity diag.Severity, name string, err error) error {
	hostlog.From(ctx).Log(severity, fmt.Sprintf(`Unable to set '%s'. This only works if your SSH server is configured to accept
	these variables via AcceptEnv. Alternatively, if a Bash-like shell runs the command on the remote host, you could
	prefix the command itself with the variables in the form 'VAR=value command'`, name))
	return fmt.Errorf("could not set environment variable %q: %w", name, err)
}
