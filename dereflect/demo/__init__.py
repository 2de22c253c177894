"""The demo stage: `dereflect demo run` (the main job on built-in defaults, main_job.py) and
`dereflect demo serve` (the phone camera app, server.py; its certificates, tls.py). The app's
sources are in android_demo/; `make demo-app` builds it into dereflect/demo/www/ (package data)."""
