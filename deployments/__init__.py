"""The Ray Serve application: thin deployments around serve_app's pure logic, and the builder that composes them
(``import_path: deployments.builder:build_app``)."""
