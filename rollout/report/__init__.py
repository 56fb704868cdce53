"""The adoption report: the marts read from the warehouse, charts, HTML and Markdown
(templates and specs under the top-level reports/ folder)."""
