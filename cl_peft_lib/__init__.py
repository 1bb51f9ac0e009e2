"""cl_peft_lib: continual learning with parameter-efficient fine-tuning of pretrained Vision Transformers.

The library behind the executable book (``book/intro.md``): one continual-learning
loop (:mod:`cl_peft_lib.loop`) shared by every method (:mod:`cl_peft_lib.methods`),
benchmarks (:mod:`cl_peft_lib.data`), metrics (:mod:`cl_peft_lib.metrics`) and a CLI.

Chapter: README (the library table).
"""
__version__ = "0.1.0"
