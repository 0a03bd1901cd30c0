//go:build tools

// Package tools pins promtool so `go mod tidy` keeps every package it needs
// in go.sum. A wrapper module is needed because Prometheus' go.mod carries a
// replace directive, which `go install pkg@version` refuses.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
