// The Go example (etc/apps/go/server.go) with the drain most Go servers use:
// srv.Shutdown alone on SIGTERM. Shutdown closes every connection idle at that
// instant (and keeps doing so while it waits), so a keep-alive client sending
// its next request on one right then gets a read error. bench/drain.py
// compares the two.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

func milliseconds(name string, def int) time.Duration {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n >= 0 {
		return time.Duration(n) * time.Millisecond
	}
	return time.Duration(def) * time.Millisecond
}

func listener() (net.Listener, error) {
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if n >= 1 && (os.Getenv("LISTEN_PID") == "" || pid == os.Getpid()) {
		// Like sd_listen_fds(1): children we start must not think these are theirs.
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDNAMES")
		f := os.NewFile(3, "listen-fd-3")
		defer f.Close() // FileListener works on its own dup: ours would outlive l.Close()
		return net.FileListener(f)
	}
	host, port := os.Getenv("HOST"), os.Getenv("PORT")
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "8080"
	}
	return net.Listen("tcp", net.JoinHostPort(host, port))
}

func main() {
	idleGrace := milliseconds("IDLE_GRACE_MS", 1000)
	drainTimeout := milliseconds("DRAIN_TIMEOUT_MS", 9000)
	worker := os.Getenv("SWARM_WORKER")
	var draining atomic.Bool

	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, status int, body string) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Worker", worker)
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			reply(w, 404, "not found\n")
			return
		}
		reply(w, 200, fmt.Sprintf("%d\n", os.Getpid()))
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, "ok") })
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil {
			ms = 1000
		}
		if ms > 60000 {
			ms = 60000
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		reply(w, 200, fmt.Sprintf("%d\n", os.Getpid()))
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			// net/http closes the connection once this answer is written.
			w.Header().Set("Connection", "close")
		}
		mux.ServeHTTP(w, r)
	})}

	l, err := listener()
	if err != nil {
		fmt.Fprintf(os.Stderr, "server.go[%d]: Failed to listen: %v\n", os.Getpid(), err)
		os.Exit(1)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-served:
		fmt.Fprintf(os.Stderr, "server.go[%d]: Failed to serve: %v\n", os.Getpid(), err)
		os.Exit(1)
	case <-stop:
	}
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	_ = idleGrace
	srv.Shutdown(ctx)
}
