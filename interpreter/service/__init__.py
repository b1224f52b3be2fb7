"""The execution worker: `python -m interpreter.service` serves this machine's sandboxes
over HTTP to bot processes elsewhere (EXECUTOR_URLS on the bot's side).

A worker holds no database access and no secret but EXECUTOR_TOKEN: input files
arrive with each request and generated files leave with the answer. See
interpreter/service/app.py for the API, probes and draining. (Nothing is imported
here: the bot's client imports only interpreter.service.wire, not the server's parts.)
"""
