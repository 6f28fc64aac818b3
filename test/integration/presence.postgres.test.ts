import { skipWithoutPostgres } from "../helpers/system";
import { runPresenceSuite } from "./presence.suite";

// A real PostgreSQL (TEST_DATABASE_URL), one fresh database for this file.
runPresenceSuite("postgres", skipWithoutPostgres);
