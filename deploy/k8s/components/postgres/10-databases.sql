-- First start only (docker-entrypoint-initdb.d): the review app's database is POSTGRES_DB;
-- the gateway keeps its API keys in a database of its own so the two schemas never meet.
CREATE DATABASE gateway OWNER lorafleet;
