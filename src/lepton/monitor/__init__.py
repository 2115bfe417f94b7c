"""Monitoring: topic and sentiment over a live text stream, surge alerts and a dashboard.

``lepton monitor MODEL [MODEL2] --config monitor.yaml --source ...`` runs :func:`run_monitor`.
Modules: ``config`` (the strict YAML config), ``surge`` (windows and the surge rule), ``store``
(SQLite / PostgreSQL), ``predict`` (the models), ``engine`` (the ingest loop), ``alerts`` (webhook
delivery), ``sources`` (replay, follow, stdin), ``app`` (HTTP ingest, dashboard, metrics).
"""

from __future__ import annotations
