from graftlm.cli import app

app()
