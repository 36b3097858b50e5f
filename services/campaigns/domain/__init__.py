"""Pure campaign rules of SPEC.md "Campaigns": no FastAPI, SQLAlchemy, aiokafka or httpx here."""
