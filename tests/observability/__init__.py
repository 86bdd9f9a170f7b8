"""Observability tier: alert rules, dashboards and scraping against promtool and prometheus built from Go modules."""
