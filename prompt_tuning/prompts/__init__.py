"""Names kept for gin files and `config.gin`s written before the prompt code was split up.

Owns nothing. The prompt module, placements and parameter paths live in models/prompt.py,
initializers in prompt_init.py, prompt files in prompt_files.py; `prompts.PromptConfig`,
`prompts.initializer_by_name` and the rest still resolve, to the very same objects.
"""

# ruff: noqa: F401
from prompt_tuning.models.prompt import (PLACEMENTS, PROMPT_AXES, PROMPT_PATH, Prompt,
                                         PromptConfig, PromptParameter, get_prompt, merge_params,
                                         prefix_prompt, prompt_tree, split_params, suffix_prompt)
from prompt_tuning.prompts.files import (DEFAULT_VARIABLE, NUMPY_MAGIC, PEFT_CONFIG, PEFT_TENSOR,
                                        PEFT_WEIGHTS, load_prompt_file)
from prompt_tuning.prompts.init import (INITIALIZERS, Initializer, class_labels, from_array,
                                       from_file, from_string, initializer_by_name,
                                       random_uniform, sampled_vocab)
from prompt_tuning.data.vocab import PAD_ID
