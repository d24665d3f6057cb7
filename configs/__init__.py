"""The shipped YAML configs, installed as package data of ``stdiff.configs`` so that the CLI's
defaults and the quickstart work outside the checkout (``stdiff.pipelines.engine.resources``)."""
