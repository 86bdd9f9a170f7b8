// Wrapper module: pins the Prometheus Operator whose CustomResourceDefinitions (example/prometheus-operator-crd/
// in the module's zip) the toolchain copies out; nothing is built from it, so it has no tools.go and `go mod
// tidy` must not be run here (it would drop the requirement).
module mlplatform.local/observability/prometheus-operator

go 1.26.7

require github.com/prometheus-operator/prometheus-operator v0.88.0
