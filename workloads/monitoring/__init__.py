"""Monitoring as plain data: alert rules (`rules`), Grafana dashboards (`dashboards`, built from `grafana`'s
panels) and how Prometheus scrapes each component (`scrape`). No Kubernetes client, no Pulumi: infra/monitoring.py
declares these as objects, and the tests render them for promtool."""
