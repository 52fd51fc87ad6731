from tests.vision_fixtures import vision_models  # noqa: F401  (tiny VLM folders and images)
