"""The input: an overlay's ``stack.yaml``, as a checked, typed model.

* :mod:`.load`: find and read stack.yaml, check it against the schema, build the model;
* :mod:`.model`: the frozen dataclasses (defaults from the schema);
* :mod:`.checks`: the rules the schema cannot state; :mod:`.secret_files`: what the
  secret files hold; :mod:`.sources`: no literal secrets in the user's kustomize files;
* :mod:`.scaffold`: ``stackgen init``'s new overlay; :mod:`.reference`: the Markdown
  reference of stack.yaml, from the schema.
"""

from stackgen.stack.load import load_stack
from stackgen.stack.model import Stack

__all__ = ["Stack", "load_stack"]
