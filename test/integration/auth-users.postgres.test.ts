import { skipWithoutPostgres } from "../helpers/system";
import { runAuthUsersSuite } from "./auth-users.suite";

// A real PostgreSQL (TEST_DATABASE_URL), one fresh database for this file.
runAuthUsersSuite("postgres", skipWithoutPostgres);
