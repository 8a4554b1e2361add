"""Flan data: templates and formats, task registration, mixtures with caps, and the packed input pipeline."""

from flan_jax.data.formats import COT_TARGET, FlanTemplates, Template
from flan_jax.data.mixing import add_mixture
from flan_jax.data.protocol import Protocol
from flan_jax.data.registration import (get_provider, register_file_task, register_flan_task,
                                        register_prompt_task, register_records_task)

__all__ = ["COT_TARGET", "FlanTemplates", "Protocol", "Template", "add_mixture", "get_provider", "register_file_task",
           "register_flan_task", "register_prompt_task", "register_records_task"]
