"""Quality metrics of explanations: CP scores, Hallucination, faithfulness, iterations-to-target.

``registry.py`` holds the registry and the view every metric reads; one module per family.
"""
