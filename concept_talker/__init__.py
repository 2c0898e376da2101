"""The Concept-Talker library around the model package: data, evaluation, training, the Hub, the tutor apps and the
`concept-talker` command line, in layers that import only downwards (`.importlinter`):

    cli -> app -> hub -> training -> evaluation -> data -> loading, files -> modeling_concept_talker
"""
