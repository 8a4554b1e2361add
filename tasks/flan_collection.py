"""The Flan 2022 collection from its published files, where $FLAN_JAX_FLAN_COLLECTION names their directory
(local or gs://): the tasks flan2022_<submix>_<task>, the mixtures flan2022_<submix> and flan2022
(flan_jax.data.collection). The vocabulary is T5's SentencePiece model at $FLAN_JAX_VOCAB, else the shared one.
Without the variable nothing is registered; a module of your own can call `register_flan_collection` instead.
"""

import os

from flan_jax.data.collection import ENV, register_flan_collection
from flan_jax.data.paths import t5_vocabulary_path
from flan_jax.errors import UserError
from flan_jax.vocab import sentencepiece_vocabulary

if os.environ.get(ENV):
  if not t5_vocabulary_path():
    raise UserError(f"{ENV} is set, but T5's vocabulary is not found: set FLAN_JAX_VOCAB to its spiece.model")
  register_flan_collection(os.environ[ENV], sentencepiece_vocabulary(t5_vocabulary_path()))
