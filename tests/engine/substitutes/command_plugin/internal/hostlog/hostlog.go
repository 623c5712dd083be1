// Package hostlog carries the engine's log sink through a request's context,
// so the command runners can stream output lines and warnings to the engine
// the way the upstream provider does.
package hostlog

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"sync"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
)

// Sink receives the messages of one request. Log messages are kept in the
// engine's diagnostics; status messages are ephemeral (the progress display's
// info column only).
type Sink interface {
	Log(severity diag.Severity, message string)
	LogStatus(severity diag.Severity, message string)
}

type sinkKey struct{}

// WithSink returns a context whose messages go to sink.
func WithSink(ctx context.Context, sink Sink) context.Context {
	return context.WithValue(ctx, sinkKey{}, sink)
}

// From returns the sink of ctx, or one that writes to the process's slog
// default (stderr) when the provider runs without an engine, as in tests.
func From(ctx context.Context) Sink {
	if sink, ok := ctx.Value(sinkKey{}).(Sink); ok && sink != nil {
		return sink
	}
	return slogSink{}
}

type slogSink struct{}

func (slogSink) Log(severity diag.Severity, message string) {
	slog.Default().Info(message, "severity", string(severity))
}

func (slogSink) LogStatus(severity diag.Severity, message string) {
	slog.Default().Info(message, "severity", string(severity), "kind", "status")
}

// Recorder is a Sink that keeps every message; tests use it.
type Recorder struct {
	mu      sync.Mutex
	entries []Entry
}

// Entry is one recorded message.
type Entry struct {
	Severity  diag.Severity
	Message   string
	Ephemeral bool
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{} }

func (r *Recorder) add(e Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, e)
}

// Log records a kept message.
func (r *Recorder) Log(severity diag.Severity, message string) {
	r.add(Entry{Severity: severity, Message: message})
}

// LogStatus records an ephemeral message.
func (r *Recorder) LogStatus(severity diag.Severity, message string) {
	r.add(Entry{Severity: severity, Message: message, Ephemeral: true})
}

// Entries returns a copy of what was recorded so far.
func (r *Recorder) Entries() []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Entry(nil), r.entries...)
}

// StreamLines sends each line read from r to the sink of ctx as an ephemeral
// info message, until r ends or a line longer than bufio.MaxScanTokenSize
// (64 KiB) arrives; done is closed when it stops. Like the upstream
// provider, it stops reading at such a line and never drains r again, so a
// writer feeding r through an io.Pipe then blocks for good.
func StreamLines(ctx context.Context, r io.Reader, done chan<- struct{}) {
	defer close(done)
	sink := From(ctx)
	scanner := bufio.NewScanner(r)
	for scanner.Scan() {
		sink.LogStatus(diag.Info, scanner.Text())
	}
}

// LockedWriter serialises writes from the stdout and stderr copiers into one
// buffer.
type LockedWriter struct {
	mu sync.Mutex
	W  io.Writer
}

func (w *LockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.W.Write(p)
}
