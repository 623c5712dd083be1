"""The stand-in KVM@TACC's service code, laid out like moto: one package per OpenStack service
(urls, responses, models, behaviour.toml) and the modules they share (the app, the backends over
one state, the machine drivers). The tests beside this folder run it through `tests/twin/serve`."""
