"""prompt-tuning: Lester et al. (2021) prompt tuning on a T5X-compatible T5 1.1 in JAX/Flax."""

import setuptools

setuptools.setup(
    name='prompt-tuning',
    version='0.1.0',
    description='Parameter-efficient prompt tuning of frozen T5 1.1 models in JAX/Flax, '
                'T5X-compatible, without t5x.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['prompt_tuning', 'prompt_tuning.*']),
    install_requires=[
        'jax>=0.4.35,<0.13',
        'flax>=0.10,<0.13',
        'optax>=0.2.4,<0.3',
        'orbax-checkpoint>=0.11,<0.13',
        'tensorstore>=0.1.65,<0.2',
        'msgpack>=1.0,<2',
        'numpy>=1.26,<3',
        'ml_dtypes>=0.4',
        'safetensors>=0.4.3,<0.9',
        'gin-config>=0.5,<0.6',
        'sentencepiece>=0.2,<0.3',
        'tqdm>=4.66,<5',
        'tensorboardX>=2.6,<3',
    ],
    extras_require={
        # Independent references used only by the tests (CPU torch is enough).
        'test': [
            'pytest>=8,<10',
            'torch>=2.4,<2.15',
            'transformers>=4.46,<6',
            'peft>=0.13,<0.22',
        ],
    },
    entry_points={'console_scripts': ['prompt-tuning=prompt_tuning.__main__:main']},
)
