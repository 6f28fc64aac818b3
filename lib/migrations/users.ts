/**
 * Versioned migrations of the users database (PostgreSQL and the embedded PGlite alike).
 * Append new steps; never edit one that has shipped. Applied names are kept in
 * `schema_migrations`; an advisory lock keeps two users nodes from migrating at once.
 */
import type { QueryInterface } from "sequelize";

export interface Migration {
	name: string;
	up: (params: { context: QueryInterface }) => Promise<void>;
	down: (params: { context: QueryInterface }) => Promise<void>;
}

const sql = (qi: QueryInterface, statements: string[]) =>
	statements.reduce<Promise<unknown>>((p, s) => p.then(() => qi.sequelize.query(s)), Promise.resolve()).then(() => undefined);

export const usersMigrations: Migration[] = [
	{
		name: "0001-users-roles-tokens",
		up: ({ context }) =>
			sql(context, [
				`CREATE TABLE roles (
					id SERIAL PRIMARY KEY,
					name VARCHAR(32) NOT NULL UNIQUE
				)`,
				`INSERT INTO roles (name) VALUES ('admin'), ('moderator'), ('user')`,
				`CREATE TABLE users (
					id SERIAL PRIMARY KEY,
					username VARCHAR(32) NOT NULL,
					email VARCHAR(254) NOT NULL,
					password_hash VARCHAR(100) NOT NULL,
					avatar_url VARCHAR(2048),
					bio VARCHAR(500),
					status VARCHAR(16) NOT NULL DEFAULT 'offline',
					failed_logins INTEGER NOT NULL DEFAULT 0,
					login_blocked_until TIMESTAMPTZ,
					created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
					updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
				)`,
				// Unique regardless of case; the lower() indexes also serve prefix search (text_pattern_ops).
				`CREATE UNIQUE INDEX users_username_lower ON users (lower(username) text_pattern_ops)`,
				`CREATE UNIQUE INDEX users_email_lower ON users (lower(email) text_pattern_ops)`,
				`CREATE INDEX users_newest ON users (created_at DESC, id DESC)`,
				`CREATE TABLE user_role (
					user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
					role_id INTEGER NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
					created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
					PRIMARY KEY (user_id, role_id)
				)`,
				`CREATE TABLE tokens (
					id BIGSERIAL PRIMARY KEY,
					user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
					token_hash CHAR(64) NOT NULL UNIQUE,
					family_id UUID NOT NULL,
					expires_at TIMESTAMPTZ NOT NULL,
					used_at TIMESTAMPTZ,
					revoked_at TIMESTAMPTZ,
					user_agent VARCHAR(256),
					ip VARCHAR(64),
					created_at TIMESTAMPTZ NOT NULL DEFAULT now()
				)`,
				`CREATE INDEX tokens_family ON tokens (family_id)`,
				`CREATE INDEX tokens_user ON tokens (user_id)`,
			]),
		down: ({ context }) => sql(context, ["DROP TABLE tokens", "DROP TABLE user_role", "DROP TABLE users", "DROP TABLE roles"]),
	},
	{
		name: "0002-session-revocations",
		up: ({ context }) =>
			sql(context, [
				// Raised by a password or role change: every access token with a lower `ver` is void.
				`ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0`,
				// 'bootstrap' for the account ADMIN_EMAIL created; the bootstrap never promotes any other.
				`ALTER TABLE users ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'register'`,
				// Which files are avatars (users.fileRefs); only short values can be a /files/<id> path.
				`CREATE INDEX users_avatar_file ON users (avatar_url) WHERE length(avatar_url) <= 64`,
				// Sessions ended before their access tokens expire; the gateways load these at start.
				// No foreign key on user_id: an account's revocation must outlive the account.
				`CREATE TABLE session_revocations (
					id BIGSERIAL PRIMARY KEY,
					user_id INTEGER NOT NULL,
					family_id UUID NULL,
					min_version INTEGER NULL,
					all_tokens BOOLEAN NOT NULL DEFAULT false,
					reason VARCHAR(32) NOT NULL,
					created_at TIMESTAMPTZ NOT NULL DEFAULT now()
				)`,
				`CREATE INDEX session_revocations_created ON session_revocations (created_at)`,
			]),
		down: ({ context }) =>
			sql(context, [
				"DROP TABLE session_revocations",
				"DROP INDEX users_avatar_file",
				"ALTER TABLE users DROP COLUMN origin",
				"ALTER TABLE users DROP COLUMN token_version",
			]),
	},
	{
		name: "0003-presence-last-seen",
		up: ({ context }) =>
			sql(context, [
				// When the user's last /chat socket closed (written at each offline transition).
				`ALTER TABLE users ADD COLUMN last_seen_at TIMESTAMPTZ NULL`,
				// false: its last seen is hidden from others, and theirs from it.
				`ALTER TABLE users ADD COLUMN show_last_seen BOOLEAN NOT NULL DEFAULT true`,
			]),
		down: ({ context }) => sql(context, ["ALTER TABLE users DROP COLUMN show_last_seen", "ALTER TABLE users DROP COLUMN last_seen_at"]),
	},
];
