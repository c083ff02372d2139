"""What the build side and the in-cluster processes share, and nothing else.

Errors and exit codes, YAML in and out, packaged data and schema defaults, one-line
schema problems, logs, certificates, the names stackgen gives things, and the models
both the stack config and the dispatcher config use (a queue's dispatch settings, a git
mirror).  Nothing here imports any other part of stackgen.
"""
