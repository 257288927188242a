"""The three analyses applied end to end (`sparse-tf analyze {ace,rotation,factored}`): each
trains (or loads) its small models on a synthetic process, runs the `sparse_tf.analysis`
functions on their activations through the hook API, and reports next to the paper's numbers.

    ace_markov      ACE on 1-layer models of the 4-state Markov chain (Schiffman 2026)
    rotation_dyck   rotation between Dyck-3 models, dense and weight-sparse (McCann 2026)
    factored        factored belief geometry on the 5-factor process (Shai et al. 2026)
"""
