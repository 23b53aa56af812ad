"""Input attribution: which prompt tokens drove a number the model computed.

Integrated Gradients (with a completeness check and adaptive quadrature), layer IG along any site,
gradient × input and occlusion; every method returns an ``Attribution`` per token
(``mechlab.attribution.result``). Attribution over components (AtP, EAP-IG) is an intervention and
lives in ``mechlab.interventions``.
"""
