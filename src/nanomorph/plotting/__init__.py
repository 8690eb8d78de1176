"""Figures that stages draw beside their results (matplotlib, headless): shared by the probe, segment and
register stages and the report, and kept apart from the report's page building so that editing the report
does not make dvc re-run the stages that only draw figures."""
