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
    packages=setuptools.find_packages(include=['prompt_tuning', 'prompt_tuning.*']) + [
        'prompt_tuning.gin', 'prompt_tuning.configs'],
    # gin/ and configs/ live at the top of the repo but install inside the package, so gin files
    # are found from a wheel as well as from a checkout.
    package_dir={'prompt_tuning.gin': 'gin', 'prompt_tuning.configs': 'configs'},
    package_data={'prompt_tuning.gin': ['**/*.gin'], 'prompt_tuning.configs': ['**/*.gin']},
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
        'matplotlib>=3.7,<4',
    ],
    extras_require={
        # The data layer (SeqIO tasks); not needed to run the model, trainer or exports.
        'data': [
            'seqio>=0.0.18,<0.1',
            'tensorflow>=2.16,<2.22',
            'tensorflow-text>=2.16,<2.22',
            'tensorflow-datasets>=4.9,<5',
        ],
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
