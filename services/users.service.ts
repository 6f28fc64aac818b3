/**
 * users: accounts, roles, tokens and ended sessions (PostgreSQL, or the embedded PGlite).
 * Owns the tables users, roles, user_role, tokens, session_revocations; nothing else reads them.
 *
 * Presence (lib/presence.ts): every users node keeps the cluster's presence from the gateways'
 * deltas; the oldest users node fans each change out to the gateways that have receivers for it,
 * and writes last_seen_at when a user goes offline.
 *
 * Profiles (a row's public columns and its roles, never a secret, a counter or live presence) are kept
 * in the broker's cacher: GET /users/me and users.resolve read no SQL for a cached user. Every
 * change of a row or its roles ends with profilesChanged(), which cleans the entry on every users
 * node before the change is answered (see there); explicit permission checks still read SQL.
 */
import crypto from "node:crypto";
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { DataTypes, Op, QueryTypes, UniqueConstraintError, type Model, type ModelStatic, type Sequelize, type Transaction } from "sequelize";
import { config } from "../lib/config";
import { EVENTS, ROLES, primaryRole } from "../lib/constants";
import { conflict, forbidden, invalidCredentials, notFound, rateLimited, unauthorized, validationError } from "../lib/errors";
import type { CallMeta } from "../lib/meta";
import { usersMigrations } from "../lib/migrations/users";
import type { RevocationReason, SessionRevocation } from "../lib/session-revocations";
import { type AuthUser, hashRefreshToken, newRefreshToken, signAccessToken } from "../lib/tokens";
import { PasswordHasher } from "../lib/password-hasher";
import { type ActionResult, broadcastEvent, callAction } from "../lib/contracts";
import { FILE_ID_PATTERN, FILE_PATH_PATTERN, fileIdOfPath, filePath } from "../lib/file-ids";
import { forgetOnOtherNodes } from "../lib/read-cache";
import {
	ClusterPresence,
	FANOUT_BATCH_MS,
	type GatewayPresenceState,
	MAX_SUBSCRIPTIONS_PER_SOCKET,
	OFFLINE_MEMORY_MS,
	type PresenceDelta,
	type PresenceFanout,
	presenceFor,
} from "../lib/presence";
import { broadcastToNodes, gatewayNodes } from "../lib/socket-directory";
import type { PresenceEntry, PresenceStatus } from "../lib/socket-events";
import { createSqlMixin, type SqlMixinThis } from "../mixins/sql.mixin";
import { userOf } from "../middlewares/authorize.middleware";
import {
	BASE64_UPLOAD_ERRORS,
	BASE64_UPLOAD_PARAMS,
	RETRY_AFTER,
	SET_REFRESH_COOKIE,
	arrayOf,
	body,
	errorExample,
	errorResponse,
	errors,
	noContent,
	ok,
	optionalBody,
	ref,
	schema,
} from "../lib/api-schemas";

/** Failed logins for one account before each further attempt must wait (doubling, capped). */
const FREE_FAILED_LOGINS = 5;
const MAX_LOGIN_BLOCK_SECONDS = 15 * 60;
/** bcrypt jobs (hash or compare) waiting for a worker thread on a users node; past that, 503 with Retry-After. */
const PASSWORD_CHECKS_WAITING = 32;
/** Nodes' clocks differ a little: a revocation outlives the tokens it covers by this much. */
const REVOCATION_MARGIN_SECONDS = 5;
/** Revocation rows are deleted this long after every token they cover has expired. */
const REVOCATION_KEEP_SECONDS = 24 * 3600;
const REVOCATION_PRUNE_EVERY_MS = 10 * 60_000;
/** The only avatar there is: a file of this server, by its canonical path. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const USERNAME = /^[A-Za-z0-9_.-]{3,32}$/;
const EMAIL_LIKE = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
/**
 * How long a cached profile is used at most, whatever the cacher does (MemoryLRU renews its own
 * TTL on every read): the bound on staleness should a node miss a cleaning (unreachable, Redis away).
 */
const PROFILE_TTL_SECONDS = 60;
/** Cache key of a profile; the version changes whenever the cached shape does (Redis outlives a deploy). */
const profileKey = (id: number) => `users.profile.v2.${id}`;
/** How long a change waits for another users node to clean its cache before going on without it. */
const FORGET_TIMEOUT_MS = 2000;

interface UserRow {
	id: number;
	username: string;
	email: string;
	password_hash: string;
	avatar_url: string | null;
	bio: string | null;
	status: string;
	failed_logins: number;
	login_blocked_until: Date | null;
	token_version: number;
	origin: string;
	/** When its last /chat socket closed (written at each offline transition). */
	last_seen_at: Date | null;
	/** false: its last seen is hidden from others, and theirs from it. */
	show_last_seen: boolean;
	created_at: Date;
	updated_at: Date;
}

/**
 * An account as presented: its public columns and its roles. This, not a presented user, is what
 * the cache holds: presentation depends on the viewer (email) and on live presence (status).
 */
interface Profile {
	id: number;
	username: string;
	email: string;
	avatar_url: string | null;
	bio: string | null;
	roles: string[];
	show_last_seen: boolean;
	/** As of `at`: a users node's memory of a later offline transition wins (ClusterPresence). */
	last_seen_at: string | null;
	created_at: string | Date;
	updated_at: string | Date;
	/** When it was read from the database (ms since the epoch). */
	at: number;
}

export interface PublicUser {
	user_id: number;
	id: number;
	username: string;
	email?: string;
	avatar_url: string | null;
	bio: string | null;
	status: PresenceStatus;
	last_seen_at: string | null;
	/** Only for the user itself and admins. */
	show_last_seen?: boolean;
	role: string;
	roles: string[];
	created_at: string;
	updated_at: string;
}

/** What ends: one login (sid), every token below a version, or every token of the account. */
interface Revocation {
	userId: number;
	reason: RevocationReason;
	sid?: string;
	minVersion?: number;
	all?: boolean;
}

function defineModels(sequelize: Sequelize) {
	const common = { timestamps: false, underscored: true, freezeTableName: true };
	const User = sequelize.define<Model<UserRow>>(
		"users",
		{
			id: { type: DataTypes.INTEGER, primaryKey: true, autoIncrement: true },
			username: DataTypes.STRING(32),
			email: DataTypes.STRING(254),
			password_hash: DataTypes.STRING(100),
			avatar_url: DataTypes.STRING(2048),
			bio: DataTypes.STRING(500),
			status: DataTypes.STRING(16),
			failed_logins: DataTypes.INTEGER,
			login_blocked_until: DataTypes.DATE,
			token_version: { type: DataTypes.INTEGER, defaultValue: 0 },
			origin: { type: DataTypes.STRING(16), defaultValue: "register" },
			last_seen_at: DataTypes.DATE,
			show_last_seen: { type: DataTypes.BOOLEAN, defaultValue: true },
			created_at: { type: DataTypes.DATE, defaultValue: DataTypes.NOW },
			updated_at: { type: DataTypes.DATE, defaultValue: DataTypes.NOW },
		},
		common,
	);
	return { main: User as ModelStatic<Model>, User };
}
type UserModels = ReturnType<typeof defineModels>;

/** What a users node knows of a gateway's presence deltas: the last applied, or the ones waiting for its full state. */
interface GatewaySync {
	epoch: string | null;
	seq: number;
	/** Deltas that came while the full state was on its way (replayed on it); null: synced. */
	waiting: PresenceDelta[] | null;
}

type UsersThis = SqlMixinThis<UserModels> & Service & UsersMethods & {
	/** The cluster's presence (lib/presence.ts), from the gateways' deltas. */
	presence: ClusterPresence;
	presenceSync: Map<string, GatewaySync>;
	/** Users whose presence changed, waiting to be fanned out (by the leader). */
	presenceQueue: Set<number>;
	presenceTimer: NodeJS.Timeout | null;
	presencePruneTimer: NodeJS.Timeout | null;
	/** The users node that fans out (cached until the registry changes). */
	presenceLeaderID: string | null;
	presenceConnectedOnce: boolean;
	lastRevocationPrune: number;
	/** bcrypt in worker threads: a few at once, a few more in line, the rest answered 503 at once. */
	passwords: PasswordHasher;
	dummy: { rounds: number; hash: Promise<string> } | null;
	/** Raised by every cleaning of cached profiles: a read that began before one does not store what it read. */
	profileEpoch: number;
	lastCacheWarning: number;
};

type Ctx<P = Record<string, never>> = Context<P, CallMeta>;

interface UsersMethods {
	presenceReceive(delta: PresenceDelta): void;
	presenceSyncGateway(gateway: string): Promise<void>;
	presenceSyncAll(): void;
	presenceGatewayLeft(gateway: string): void;
	presenceChanged(userIds: number[]): void;
	presenceIsLeader(): boolean;
	presenceFanout(userIds: number[]): Promise<void>;
	presenceFanoutOne(userId: number, now: number, perGateway: Map<string, PresenceFanout[]>): Promise<void>;
	presenceViews(ctx: Ctx<unknown> | undefined, targets: number[], viewerId: number | null, profiles: Map<number, Profile>): Promise<Map<number, PresenceEntry>>;
	lastSeenOf(profile: Profile | undefined, at: number | null): string | null;
	findUser(id: number, tx?: Transaction): Promise<UserRow | null>;
	lockUser(id: number, tx: Transaction, mode: "share" | "update"): Promise<UserRow | null>;
	findUserByLogin(field: "email" | "username", value: string): Promise<UserRow | null>;
	rolesOf(ids: number[], tx?: Transaction): Promise<Map<number, string[]>>;
	profilesOf(ids: number[]): Promise<Map<number, Profile>>;
	loadProfiles(ids: number[]): Promise<Profile[]>;
	withRoles(rows: UserRow[]): Promise<Profile[]>;
	profilesChanged(ids: number[], requestID?: string | null): Promise<void>;
	forgetProfiles(ids: number[]): Promise<void>;
	cacheTrouble(what: string, err: unknown): void;
	present(profiles: Profile[], viewer: AuthUser | null | undefined, ctx?: Ctx<unknown>): Promise<PublicUser[]>;
	presentOne(profile: Profile, viewer: AuthUser | null | undefined, ctx?: Ctx<unknown>): Promise<PublicUser>;
	blockedAmong(ctx: Ctx<unknown> | undefined, viewerId: number, others: number[]): Promise<Set<number>>;
	issueTokens(ctx: Ctx<unknown>, user: UserRow, familyId?: string, tx?: Transaction): Promise<{ accessToken: string; refreshToken: string }>;
	revokeFamily(familyId: string, tx: Transaction, userId?: number): Promise<number>;
	revokeSessions(ctx: Ctx<unknown>, revocation: Revocation, tx?: Transaction): Promise<void>;
	pruneRevocations(): Promise<void>;
	countPasswordAttempt(userId: number): Promise<void>;
	checkOwnPassword(userId: number, password: string): Promise<UserRow>;
	dummyHash(): Promise<string>;
	createUser(input: { username: string; email: string; password: string; roles: string[]; origin?: "register" | "bootstrap" }): Promise<UserRow>;
	setRoles(userId: number, roles: string[], tx: Transaction): Promise<void>;
	lockRoleChanges(tx: Transaction): Promise<void>;
	callerIsAdmin(ctx: Ctx<unknown>): Promise<boolean>;
	adminCount(tx: Transaction): Promise<number>;
	checkPasswordBytes(field: string, password: string): void;
	uniqueViolation(err: unknown): never;
	avatarFileId(url: string | null | undefined): string | null;
	releaseFiles(ctx: Ctx<unknown>, urls: (string | null | undefined)[]): void;
	bootstrapAdmin(): Promise<void>;
	bootstrapRefusal(message: string): Error;
}

const idParam = { type: "number", integer: true, positive: true, convert: true } as const;
const usernameRule = { type: "string", trim: true, min: 3, max: 32, pattern: "^[A-Za-z0-9_.-]+$", messages: { stringPattern: "Username may contain letters, digits, '_', '.' and '-' only" } };
const emailRule = { type: "email", normalize: true, max: 254 } as const;
const passwordRule = { type: "string", min: 8, max: 72 } as const;
const limitRule = (def: number) => ({ type: "number", integer: true, min: 1, max: 100, convert: true, optional: true, default: def }) as const;

/** What a user may change of its profile (update and updateMe). */
interface ProfileChange {
	username?: string;
	email?: string;
	avatar_url?: string | null;
	bio?: string | null;
	show_last_seen?: boolean;
	currentPassword?: string;
}
const PROFILE_CHANGE_PARAMS = {
	username: { ...usernameRule, optional: true },
	email: { ...emailRule, optional: true },
	avatar_url: { type: "string", optional: true, nullable: true, max: 2048, trim: true },
	bio: { type: "string", optional: true, nullable: true, max: 500 },
	show_last_seen: { type: "boolean", optional: true },
	currentPassword: { type: "string", optional: true, min: 1, max: 200 },
} as const;
const PROFILE_CHANGE_TEXT = {
	username: "3–32 characters: letters, digits, `_`, `.` and `-`. Surrounding whitespace is trimmed.",
	email: "Stored in lower case.",
	avatar_url:
		"`/files/<fileId>` of an image the caller uploaded (400 `VALIDATION_ERROR` otherwise, 403 for someone else's file); `null` (or an empty string) removes the avatar. A replaced avatar's file is deleted unless something else uses it.",
	bio: "`null` removes it.",
	show_last_seen: "`false`: others do not see this user's `last_seen_at`, and it does not see theirs.",
	currentPassword:
		"The caller's own current password: required to change `email` (400 `VALIDATION_ERROR` when missing, 400 `INVALID_CREDENTIALS` when wrong; counted like a failed login).",
};

/** LIKE pattern for a literal prefix: the user's %, _ and \ match themselves. */
const likePrefix = (s: string) => s.toLowerCase().replace(/[\\%_]/g, c => "\\" + c) + "%";

const sameSet = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every(x => b.includes(x));

/** The cached form of an account: dates as ISO strings (as Redis gives them back), frozen (shared by readers). */
function profileOf(row: Omit<Profile, "roles" | "at" | "last_seen_at"> & { last_seen_at: string | Date | null }, roles: string[], at: number): Profile {
	return Object.freeze({
		id: Number(row.id),
		username: row.username,
		email: row.email,
		avatar_url: row.avatar_url,
		bio: row.bio,
		roles: Object.freeze([...roles]) as string[],
		show_last_seen: row.show_last_seen !== false,
		last_seen_at: row.last_seen_at ? new Date(row.last_seen_at).toISOString() : null,
		created_at: new Date(row.created_at).toISOString(),
		updated_at: new Date(row.updated_at).toISOString(),
		at,
	});
}

const UsersService: ServiceSchema<ServiceSettingSchema, UsersThis> = {
	name: "users",
	mixins: [
		createSqlMixin<UserModels>({
			lockKey: 727001,
			migrations: usersMigrations,
			defineModels,
		}),
	],

	actions: {
		register: {
			rest: "POST /auth/register",
			gatewayRoute: "auth",
			auth: false,
			openapi: {
				operationId: "register",
				tag: "Auth",
				summary: "Create an account and log in",
				description: "Creates a user with the role `user` and starts a login: answers the user, an access token and a refresh token, and sets the refresh-token cookie. Rate-limited per client address.",
				params: {
					username: "3–32 characters: letters, digits, `_`, `.` and `-`. Surrounding whitespace is trimmed.",
					email: "Stored in lower case.",
					password: "8 characters at least and at most 72 bytes in UTF-8 (bcrypt reads no more).",
					confirmPassword: "Optional; when given it must equal `password`.",
				},
				responses: {
					201: ok("Registered and logged in.", schema("AuthResult"), SET_REFRESH_COOKIE),
					...errors(400, 409, 413, 429, 503),
				},
			},
			params: {
				$$strict: "remove",
				username: usernameRule,
				email: emailRule,
				password: passwordRule,
				confirmPassword: { type: "string", optional: true, max: 200 },
			},
			async handler(this: UsersThis, ctx: Ctx<{ username: string; email: string; password: string; confirmPassword?: string }>) {
				const { username, email, password, confirmPassword } = ctx.params;
				this.checkPasswordBytes("password", password);
				if (confirmPassword !== undefined && confirmPassword !== password) {
					throw validationError("Passwords do not match", [{ field: "confirmPassword", type: "equal", message: "Passwords do not match" }]);
				}
				const user = await this.createUser({ username, email, password, roles: ["user"] });
				const tokens = await this.issueTokens(ctx, user);
				ctx.meta.$statusCode = 201;
				ctx.meta.$location = `/users/${user.id}`;
				const viewer = { id: user.id, username: user.username, roles: ["user"] };
				const [profile] = await this.withRoles([user]);
				return { user: await this.presentOne(profile, viewer, ctx), ...tokens };
			},
		},

		login: {
			rest: "POST /auth/login",
			gatewayRoute: "auth",
			auth: false,
			openapi: {
				operationId: "login",
				tag: "Auth",
				summary: "Log in with email or username and password",
				description:
					"Answers as register (200) and sets the refresh-token cookie. Wrong credentials (unknown account or wrong password) are 400 `INVALID_CREDENTIALS`. " +
					"Besides the per-address limit, repeated failed logins for one account block further attempts on it for a growing time: 429 with `Retry-After`.",
				// The body made from params could not say that one of email and username is required.
				requestBody: body(schema("LoginRequest")),
				responses: {
					200: ok("Logged in.", schema("AuthResult"), SET_REFRESH_COOKIE),
					400: ref("responses", "InvalidCredentials"),
					429: errorResponse(
						"`RATE_LIMITED`: too many requests from this address, or too many failed logins for this account. Wait `Retry-After` seconds.",
						{ rateLimited: errorExample(429, "RATE_LIMITED", "Too many requests, slow down") },
						RETRY_AFTER,
					),
					...errors(413, 503),
				},
			},
			params: {
				$$strict: "remove",
				email: { type: "string", optional: true, trim: true, min: 1, max: 254 },
				username: { type: "string", optional: true, trim: true, min: 1, max: 254 },
				password: { type: "string", min: 1, max: 200 },
			},
			async handler(this: UsersThis, ctx: Ctx<{ email?: string; username?: string; password: string }>) {
				const { email, username, password } = ctx.params;
				if (!email && !username) {
					throw validationError("Give an email or a username", [{ field: "email", type: "required", message: "Give an email or a username" }]);
				}
				// Clients send the login name in either field; an "@" decides which column it is.
				const login = (email || username) as string;
				const user = await this.findUserByLogin(login.includes("@") ? "email" : "username", login);
				if (!user) {
					const dummy = await this.dummyHash();
					await this.passwords.compare(password, dummy);
					throw invalidCredentials();
				}
				await this.countPasswordAttempt(user.id);
				if (!(await this.passwords.compare(password, user.password_hash))) throw invalidCredentials();
				const result = await this.sequelize.transaction(async tx => {
					// The right password clears the counter. Matching the hash we compared against, under the
					// row lock, means a password change that committed meanwhile wins over this login.
					const [fresh] = await this.sequelize.query<UserRow>(
						"UPDATE users SET failed_logins = 0, login_blocked_until = NULL WHERE id = :id AND password_hash = :hash RETURNING *",
						{ replacements: { id: user.id, hash: user.password_hash }, type: QueryTypes.SELECT, transaction: tx },
					);
					if (!fresh) return null;
					return { fresh, tokens: await this.issueTokens(ctx, fresh, undefined, tx) };
				});
				if (!result) throw invalidCredentials();
				const [profile] = await this.withRoles([result.fresh]);
				const presented = await this.presentOne(profile, { id: user.id, username: user.username, roles: [] }, ctx);
				return { user: presented, ...result.tokens };
			},
		},

		refresh: {
			rest: "POST /auth/refresh",
			gatewayRoute: "auth",
			auth: false,
			openapi: {
				operationId: "refreshTokens",
				tag: "Auth",
				summary: "Exchange a refresh token for new tokens (rotation)",
				description:
					"Takes the refresh token from the body or, failing that, from the `refreshToken` cookie (see the `refreshCookie` security scheme). " +
					"The token presented is spent: the answer carries a new refresh token (also set as the cookie) and a new access token. " +
					"Presenting a spent token again revokes that login's whole token family, and answers 401.",
				parameters: [ref("parameters", "RefreshTokenCookie")],
				requestBody: optionalBody(schema("RefreshTokenRequest"), "Optional when the cookie is sent."),
				responses: {
					200: ok("New tokens.", schema("Tokens"), SET_REFRESH_COOKIE),
					401: errorResponse("`UNAUTHORIZED`: no refresh token, or it is unknown, expired, revoked or already spent.", {
						missing: errorExample(401, "UNAUTHORIZED", "Refresh token required"),
						invalid: errorExample(401, "UNAUTHORIZED", "Invalid refresh token"),
						expired: errorExample(401, "UNAUTHORIZED", "Refresh token expired"),
					}),
					...errors(400, 413, 429, 503),
				},
			},
			params: {
				$$strict: "remove",
				refreshToken: { type: "string", optional: true, min: 1, max: 200 },
			},
			async handler(this: UsersThis, ctx: Ctx<{ refreshToken?: string }>) {
				const presented = ctx.params.refreshToken || ctx.meta.refreshCookie;
				if (!presented) throw unauthorized("Refresh token required");
				const hash = hashRefreshToken(presented);
				const result = await this.sequelize.transaction(async tx => {
					const [owner] = await this.sequelize.query<{ user_id: number }>("SELECT user_id FROM tokens WHERE token_hash = :hash", {
						replacements: { hash },
						type: QueryTypes.SELECT,
						transaction: tx,
					});
					if (!owner) return { error: "unknown" as const };
					// The account before the token, the order a password or role change takes them in: a
					// refresh racing one waits for it (and sees its revocation) or is revoked by it.
					const user = await this.lockUser(owner.user_id, tx, "share");
					if (!user) return { error: "unknown" as const };
					const [row] = await this.sequelize.query<{ id: string; user_id: number; family_id: string; expires_at: Date; used_at: Date | null; revoked_at: Date | null }>(
						"SELECT id, user_id, family_id, expires_at, used_at, revoked_at FROM tokens WHERE token_hash = :hash FOR UPDATE",
						{ replacements: { hash }, type: QueryTypes.SELECT, transaction: tx },
					);
					if (!row) return { error: "unknown" as const };
					// A login that ended (logout, password change): nothing to detect, the token is just dead.
					if (row.revoked_at && !row.used_at) return { error: "ended" as const };
					if (row.used_at) {
						// A spent token came back: someone holds a copy. End the whole login, its access tokens too.
						if ((await this.revokeFamily(row.family_id, tx)) > 0) {
							await this.revokeSessions(ctx, { userId: row.user_id, sid: row.family_id, reason: "token_reuse" }, tx);
						}
						return { error: "reused" as const };
					}
					if (row.expires_at.getTime() <= Date.now()) return { error: "expired" as const };
					await this.sequelize.query("UPDATE tokens SET used_at = now() WHERE id = :id", { replacements: { id: row.id }, transaction: tx });
					return { tokens: await this.issueTokens(ctx, user, row.family_id, tx) };
				});
				if ("error" in result) {
					if (result.error === "reused") this.logger.warn("Refresh token reuse detected; token family revoked", { traceId: ctx.requestID });
					throw unauthorized(result.error === "expired" ? "Refresh token expired" : "Invalid refresh token");
				}
				return result.tokens;
			},
		},

		logout: {
			rest: "POST /auth/logout",
			gatewayRoute: "auth",
			// Reached with or without a token: the gateway names the login of a valid one in ctx.meta.session.
			auth: false,
			openapi: {
				operationId: "logout",
				tag: "Auth",
				summary: "End a login",
				description:
					"Revokes the refresh token given in the body or the `refreshToken` cookie (with the rest of its login's token family) and clears the cookie. " +
					"Answers 204 even when no token, or an unknown one, is given. The access tokens of that login stop working at once on every gateway, and its sockets are ended with `session:ended`.",
				parameters: [ref("parameters", "RefreshTokenCookie")],
				requestBody: optionalBody(schema("RefreshTokenRequest"), "Optional when the cookie is sent."),
				responses: {
					204: noContent("Logged out; the cookie is cleared.", SET_REFRESH_COOKIE),
					...errors(400, 413, 429, 503),
				},
			},
			params: {
				$$strict: "remove",
				refreshToken: { type: "string", optional: true, min: 1, max: 200 },
			},
			async handler(this: UsersThis, ctx: Ctx<{ refreshToken?: string }>) {
				const presented = ctx.params.refreshToken || ctx.meta.refreshCookie;
				// The logins to end: family id → its user.
				const ending = new Map<string, number>();
				if (presented) {
					const [row] = await this.sequelize.query<{ family_id: string; user_id: number }>("SELECT family_id, user_id FROM tokens WHERE token_hash = :hash", {
						replacements: { hash: hashRefreshToken(presented) },
						type: QueryTypes.SELECT,
					});
					if (row) ending.set(row.family_id, row.user_id);
				}
				// The gateway names the login of a valid bearer token sent along: a client that lost its
				// refresh token can still end its session, and one that sends both ends both.
				const session = ctx.meta.session;
				const sid = typeof session?.sid === "string" && UUID.test(session.sid) ? session.sid.toLowerCase() : null;
				const userId = Number(session?.userId);
				if (sid && Number.isSafeInteger(userId) && userId > 0 && !ending.has(sid)) ending.set(sid, userId);
				for (const [familyId, owner] of ending) {
					await this.sequelize.transaction(async tx => {
						// Nothing left to end (logged out before): nothing to record either.
						if ((await this.revokeFamily(familyId, tx, owner)) > 0) await this.revokeSessions(ctx, { userId: owner, sid: familyId, reason: "logout" }, tx);
					});
				}
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		me: {
			rest: "GET /users/me",
			openapi: {
				operationId: "getMe",
				tag: "Users",
				summary: "The caller's own user (with email)",
				responses: {
					200: ok("The caller.", schema("User")),
					...errors(401, 429, 503),
				},
			},
			async handler(this: UsersThis, ctx: Ctx) {
				const caller = userOf(ctx);
				// From the cache when it is there: no SQL at all (presence is in memory, the viewer is the user).
				const profile = (await this.profilesOf([caller.id])).get(caller.id);
				if (!profile) throw unauthorized("This account no longer exists");
				return this.presentOne(profile, caller, ctx);
			},
		},

		list: {
			rest: "GET /users",
			openapi: {
				operationId: "listUsers",
				tag: "Users",
				summary: "List users, a page at a time",
				description: "Newest first. `search` matches, case-insensitively, a prefix of the username, or a whole email address (admins: an email prefix).",
				params: {
					search: "Filter (trimmed).",
					page: "1-based page number.",
					limit: "Users per page.",
				},
				responses: {
					200: ok("One page of users.", schema("UserPage")),
					...errors(400, 401, 429, 503),
				},
			},
			params: {
				$$strict: "remove",
				search: { type: "string", optional: true, trim: true, max: 100 },
				page: { type: "number", integer: true, min: 1, max: 100000, convert: true, optional: true, default: 1 },
				limit: limitRule(50),
			},
			async handler(this: UsersThis, ctx: Ctx<{ search?: string; page: number; limit: number }>) {
				const caller = userOf(ctx);
				const { search, page, limit } = ctx.params;
				let where = {};
				if (search) {
					const lower = (col: string) => this.sequelize.fn("lower", this.sequelize.col(col));
					// Usernames are public: by prefix. An email only by the whole address (an admin: by
					// prefix), so that nobody can spell out another user's address letter by letter.
					const byEmail = (await this.callerIsAdmin(ctx)) ? { [Op.like]: likePrefix(search) } : { [Op.eq]: search.toLowerCase() };
					where = { [Op.or]: [this.sequelize.where(lower("username"), { [Op.like]: likePrefix(search) }), this.sequelize.where(lower("email"), byEmail)] };
				}
				const { rows, count } = await this.models.User.findAndCountAll({
					where,
					order: [
						["created_at", "DESC"],
						["id", "DESC"],
					],
					limit,
					offset: (page - 1) * limit,
					raw: true,
				});
				return {
					data: await this.present(await this.withRoles(rows as unknown as UserRow[]), caller, ctx),
					total: count,
					page,
					limit,
					totalPages: Math.ceil(count / limit),
				};
			},
		},

		search: {
			rest: "GET /users/search",
			openapi: {
				operationId: "searchUsers",
				tag: "Users",
				summary: "Find users by username prefix, or by a whole email address",
				description:
					"Case-insensitive prefix match on the username; an email matches only when `q` is the whole address (admins: by prefix). " +
					"An exact match comes first, then shorter usernames. Another user's email is never shown.",
				params: {
					q: "The prefix (trimmed).",
					limit: "At most this many users.",
				},
				responses: {
					200: ok("Matching users.", arrayOf(schema("User"))),
					...errors(400, 401, 429, 503),
				},
			},
			params: {
				$$strict: "remove",
				q: { type: "string", trim: true, min: 1, max: 100 },
				limit: limitRule(20),
			},
			async handler(this: UsersThis, ctx: Ctx<{ q: string; limit: number }>) {
				const caller = userOf(ctx);
				// As in list: usernames by prefix, emails by the whole address unless the caller is an admin.
				const byEmail = (await this.callerIsAdmin(ctx)) ? "lower(email) LIKE :pattern" : "lower(email) = :exact";
				const rows = await this.sequelize.query<UserRow>(
					`SELECT * FROM users
					 WHERE lower(username) LIKE :pattern OR ${byEmail}
					 ORDER BY (lower(username) = :exact OR lower(email) = :exact) DESC, length(username), lower(username), id
					 LIMIT :limit`,
					{ replacements: { pattern: likePrefix(ctx.params.q), exact: ctx.params.q.toLowerCase(), limit: ctx.params.limit }, type: QueryTypes.SELECT },
				);
				return this.present(await this.withRoles(rows), caller, ctx);
			},
		},

		get: {
			rest: "GET /users/:id",
			openapi: {
				operationId: "getUser",
				tag: "Users",
				summary: "One user (public fields; email only for self or an admin)",
				params: { id: "The user's id." },
				responses: {
					200: ok("The user.", schema("User")),
					...errors(400, 401, 404, 429, 503),
				},
			},
			params: { $$strict: "remove", id: idParam },
			async handler(this: UsersThis, ctx: Ctx<{ id: number }>) {
				const caller = userOf(ctx);
				const profile = (await this.profilesOf([ctx.params.id])).get(ctx.params.id);
				if (!profile) throw notFound("User");
				return this.presentOne(profile, caller, ctx);
			},
		},

		batch: {
			rest: "POST /users/batch",
			openapi: {
				operationId: "getUsersBatch",
				tag: "Users",
				summary: "Look up several users by id",
				description: "Answers the users in the order asked; unknown ids are left out. Cheap enough to call on every typing event.",
				params: { ids: "User ids (numeric strings are accepted too); duplicates are looked up once." },
				responses: {
					200: ok("The users found.", arrayOf(schema("User"))),
					...errors(400, 401, 413, 429, 503),
				},
			},
			params: {
				$$strict: "remove",
				ids: { type: "array", max: 100, items: { type: "number", integer: true, positive: true, convert: true } },
			},
			async handler(this: UsersThis, ctx: Ctx<{ ids: number[] }>) {
				const caller = userOf(ctx);
				const ids = [...new Set(ctx.params.ids)];
				if (ids.length === 0) return [];
				const byId = await this.profilesOf(ids);
				// In the order asked for; unknown ids are left out.
				return this.present(ids.map(id => byId.get(id)).filter((p): p is Profile => !!p), caller, ctx);
			},
		},

		update: {
			rest: ["PUT /users/:id", "PATCH /users/:id"],
			owner: "id",
			openapi: {
				operationId: ["updateUser", "patchUser"],
				tag: "Users",
				summary: "Update a user's profile (self or admin)",
				description: "Both PUT and PATCH change only the fields given. Only the user itself or an admin may do it.",
				params: { id: "The user's id.", ...PROFILE_CHANGE_TEXT },
				responses: {
					200: ok("The updated user.", schema("User")),
					...errors(400, 401, 403, 404, 409, 413, 429, 503),
				},
			},
			params: { $$strict: "remove", id: idParam, ...PROFILE_CHANGE_PARAMS },
			async handler(this: UsersThis, ctx: Ctx<ProfileChange & { id: number }>) {
				const caller = userOf(ctx);
				const { id, currentPassword, ...changes } = ctx.params;
				const user = await this.findUser(id);
				if (!user) throw notFound("User");
				const patch: Partial<UserRow> = {};
				if (changes.username !== undefined) patch.username = changes.username;
				if (changes.bio !== undefined) patch.bio = changes.bio;
				if (changes.show_last_seen !== undefined && changes.show_last_seen !== user.show_last_seen) patch.show_last_seen = changes.show_last_seen;
				// Everything is checked before anything is written.
				if (changes.avatar_url !== undefined) {
					const wanted = changes.avatar_url || null;
					// Sending back the avatar the profile has (a PUT of the whole profile) is no change.
					if (wanted !== user.avatar_url) {
						// Only a file of this server: no third-party URL that every viewer's browser would fetch.
						if (wanted !== null && !FILE_PATH_PATTERN.test(wanted)) {
							throw validationError("avatar_url must be /files/<id> of an image you uploaded, or null", [{ field: "avatar_url", type: "avatar", message: "Must be /files/<id> of an image you uploaded, or null" }]);
						}
						patch.avatar_url = wanted;
					}
				}
				if (changes.email !== undefined && changes.email.toLowerCase() !== user.email) {
					// A stolen access token must not be enough to move the account to another address:
					// the caller proves it knows its own password (an admin too, for another account).
					if (!currentPassword) {
						throw validationError("Changing the email needs your current password", [{ field: "currentPassword", type: "required", message: "Your current password is required to change the email" }]);
					}
					await this.checkOwnPassword(caller.id, currentPassword);
					patch.email = changes.email.toLowerCase();
				}
				// The files service answers the file, or VALIDATION_ERROR / FORBIDDEN (not an image, not yours).
				if (patch.avatar_url) {
					try {
						await ctx.call("files.verifyImage", { ref: patch.avatar_url, ownerId: caller.id });
					} catch (err) {
						const e = err as Error & { type?: string };
						if (e.type === "VALIDATION_ERROR") throw validationError(e.message, [{ field: "avatar_url", type: "avatar", message: e.message }]);
						throw err;
					}
				}
				if (Object.keys(patch).length > 0) {
					let previousAvatar: string | null = null;
					try {
						await this.sequelize.transaction(async tx => {
							const locked = await this.lockUser(id, tx, "update");
							if (!locked) throw notFound("User");
							previousAvatar = locked.avatar_url;
							await this.models.User.update({ ...patch, updated_at: new Date() }, { where: { id }, transaction: tx });
						});
					} catch (err) {
						this.uniqueViolation(err);
					} finally {
						await this.profilesChanged([id], ctx.requestID);
					}
					if (patch.avatar_url !== undefined && previousAvatar !== patch.avatar_url) this.releaseFiles(ctx, [previousAvatar]);
				}
				const updated = (await this.profilesOf([id])).get(id);
				if (!updated) throw notFound("User");
				const presented = await this.presentOne(updated, caller, ctx);
				void broadcastEvent(ctx, EVENTS.userUpdated, { userId: id });
				// Who sees this user's presence sees it again with or without its last seen (this node has the whole picture).
				if (patch.show_last_seen !== undefined) void this.presenceFanout([id]);
				return presented;
			},
		},

		updateMe: {
			rest: "PATCH /users/me",
			openapi: {
				operationId: "patchMe",
				tag: "Users",
				summary: "Update the caller's own profile",
				description: "As PATCH /users/{id} with the caller's id: changes only the fields given.",
				params: PROFILE_CHANGE_TEXT,
				responses: {
					200: ok("The updated user.", schema("User")),
					...errors(400, 401, 404, 409, 413, 429, 503),
				},
			},
			params: { $$strict: "remove", ...PROFILE_CHANGE_PARAMS },
			async handler(this: UsersThis, ctx: Ctx<ProfileChange>) {
				const caller = userOf(ctx);
				return ctx.call("users.update", { ...ctx.params, id: caller.id });
			},
		},

		remove: {
			rest: "DELETE /users/:id",
			owner: "id",
			openapi: {
				operationId: "deleteUser",
				tag: "Users",
				summary: "Delete a user (self or admin)",
				description: "Deletes the account with its roles and refresh tokens. The last admin cannot be deleted (409).",
				params: { id: "The user's id." },
				responses: {
					204: noContent("Deleted."),
					409: errorResponse("`CONFLICT`: this is the last admin.", { lastAdmin: errorExample(409, "CONFLICT", "The last admin cannot be deleted") }),
					...errors(400, 401, 403, 404, 429, 503),
				},
			},
			params: { $$strict: "remove", id: idParam },
			async handler(this: UsersThis, ctx: Ctx<{ id: number }>) {
				const { id } = ctx.params;
				let deleting = false;
				const avatar = await this.sequelize
					.transaction(async tx => {
						await this.lockRoleChanges(tx);
						const user = await this.lockUser(id, tx, "update");
						if (!user) throw notFound("User");
						const roles = (await this.rolesOf([id], tx)).get(id) ?? [];
						if (roles.includes("admin") && (await this.adminCount(tx)) <= 1) {
							throw conflict("The last admin cannot be deleted");
						}
						deleting = true;
						// user_role and tokens go with it (ON DELETE CASCADE); its access tokens end with it.
						await this.models.User.destroy({ where: { id }, transaction: tx });
						await this.revokeSessions(ctx, { userId: id, all: true, reason: "account_deleted" }, tx);
						return user.avatar_url;
					})
					.finally(() => deleting && this.profilesChanged([id], ctx.requestID));
				void broadcastEvent(ctx, EVENTS.userDeleted, { userId: id });
				this.releaseFiles(ctx, [avatar]);
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		changePassword: {
			rest: "POST /users/change-password",
			openapi: {
				operationId: "changePassword",
				tag: "Users",
				summary: "Change the caller's password",
				description:
					"Checks `oldPassword`, sets `newPassword` and ends every login of the account: all its refresh tokens are revoked, its access tokens stop working at once and its sockets are ended. Log in again afterwards.",
				params: { newPassword: "8 characters at least and at most 72 bytes in UTF-8 (bcrypt reads no more)." },
				responses: {
					204: noContent("Password changed; every refresh token of the account is revoked."),
					400: ref("responses", "InvalidCredentials"),
					...errors(401, 413, 429, 503),
				},
			},
			params: {
				$$strict: "remove",
				oldPassword: { type: "string", min: 1, max: 200 },
				newPassword: passwordRule,
			},
			async handler(this: UsersThis, ctx: Ctx<{ oldPassword: string; newPassword: string }>) {
				const caller = userOf(ctx);
				this.checkPasswordBytes("newPassword", ctx.params.newPassword);
				// Counted like a login: a stolen access token must not be a way to guess the password.
				const user = await this.checkOwnPassword(caller.id, ctx.params.oldPassword);
				const hash = await this.passwords.hash(ctx.params.newPassword, config.bcryptRounds);
				// The cached profile holds no hash, but updated_at changes: cleaned like every change of the row.
				const changed = await this.sequelize.transaction(async tx => {
					// Only over the hash that was checked: of two changes at once, the second fails.
					const [row] = await this.sequelize.query<{ token_version: number }>(
						`UPDATE users SET password_hash = :hash, token_version = token_version + 1, updated_at = now()
						 WHERE id = :id AND password_hash = :old RETURNING token_version`,
						{ replacements: { id: user.id, hash, old: user.password_hash }, type: QueryTypes.SELECT, transaction: tx },
					);
					if (!row) return false;
					// Every login of this account ends, this one too: a stolen token dies with the old password.
					await this.sequelize.query("UPDATE tokens SET revoked_at = now() WHERE user_id = :id AND revoked_at IS NULL", {
						replacements: { id: user.id },
						transaction: tx,
					});
					await this.revokeSessions(ctx, { userId: user.id, minVersion: row.token_version, reason: "password_changed" }, tx);
					return true;
				}).finally(() => this.profilesChanged([user.id], ctx.requestID));
				if (!changed) throw invalidCredentials();
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		uploadAvatar: {
			rest: "POST /users/upload-avatar",
			gatewayRoute: "large-body",
			openapi: {
				operationId: "uploadAvatar",
				tag: "Users",
				summary: "Upload the caller's avatar (base64 JSON)",
				description:
					"The same body and limits as POST /upload/file-base64 (a `data:` URL prefix is accepted; the JSON body may be up to 35 MiB), but only images are accepted: " +
					"PNG, JPEG, GIF or WebP, decided from the content. The image is stored as a file and its `url` becomes the caller's `avatar_url`. " +
					"The previous avatar's file is not deleted.",
				params: BASE64_UPLOAD_PARAMS,
				responses: {
					200: ok("The avatar is set.", schema("AvatarUploadResult")),
					...errors(401, 429, 503),
					...BASE64_UPLOAD_ERRORS,
					415: errorResponse("`UNSUPPORTED_MEDIA_TYPE`: the file is not a PNG, JPEG, GIF or WebP image (decided from its content, whatever its name or claimed type). Nothing is kept.", {
						notImage: errorExample(415, "UNSUPPORTED_MEDIA_TYPE", "Only images are accepted here"),
					}),
				},
			},
			params: {
				$$strict: "remove",
				fileName: { type: "string", min: 1, max: 500 },
				mimeType: { type: "string", optional: true, max: 200 },
				base64: { type: "string", min: 1 },
			},
			async handler(this: UsersThis, ctx: Ctx<{ fileName: string; mimeType?: string; base64: string }>) {
				const caller = userOf(ctx);
				// A deleted account's token stores nothing.
				if (!(await this.findUser(caller.id))) throw unauthorized("This account no longer exists");
				// The files service checks it is an image from its bytes, and stores it.
				const file = await callAction(ctx, "files.saveBase64", { ...ctx.params, onlyImages: true });
				ctx.meta.$statusCode = 200;
				const url = FILE_ID_PATTERN.test(file.fileId) ? filePath(file.fileId) : file.url;
				const previous = await this.sequelize
					.transaction(async tx => {
						const locked = await this.lockUser(caller.id, tx, "update");
						if (!locked) return undefined;
						await this.models.User.update({ avatar_url: url, updated_at: new Date() }, { where: { id: caller.id }, transaction: tx });
						return locked.avatar_url;
					})
					.finally(() => this.profilesChanged([caller.id], ctx.requestID));
				if (previous === undefined) {
					this.releaseFiles(ctx, [url]);
					throw unauthorized("This account no longer exists");
				}
				if (previous !== url) this.releaseFiles(ctx, [previous]);
				const user = (await this.profilesOf([caller.id])).get(caller.id);
				if (!user) throw unauthorized("This account no longer exists");
				void broadcastEvent(ctx, EVENTS.userUpdated, { userId: caller.id });
				return { url, user: await this.presentOne(user, caller, ctx) };
			},
		},

		roles: {
			rest: "GET /roles",
			openapi: {
				operationId: "listRoles",
				tag: "Roles",
				summary: "The roles that exist",
				responses: {
					200: ok("Every role.", arrayOf(schema("Role"))),
					...errors(401, 429, 503),
				},
			},
			async handler(this: UsersThis) {
				return this.sequelize.query<{ id: number; name: string }>("SELECT id, name FROM roles ORDER BY id", { type: QueryTypes.SELECT });
			},
		},

		setRoles: {
			rest: "PUT /users/:id/roles",
			roles: ["admin"],
			openapi: {
				operationId: "setUserRoles",
				tag: "Users",
				summary: "Replace a user's roles (admin only)",
				description: "Sets the complete set of roles. Removing the admin role from the last admin is refused (409).",
				params: {
					id: "The user's id.",
					roles: "The user's complete set of roles (replaces the current one).",
				},
				responses: {
					200: ok("The user with its new roles.", schema("User")),
					409: errorResponse("`CONFLICT`: the user is the last admin and `roles` lacks `admin`.", {
						lastAdmin: errorExample(409, "CONFLICT", "The last admin cannot lose the admin role"),
					}),
					...errors(400, 401, 403, 404, 413, 429, 503),
				},
			},
			params: {
				$$strict: "remove",
				id: idParam,
				roles: { type: "array", min: 1, max: ROLES.length, unique: true, items: { type: "enum", values: [...ROLES] } },
			},
			async handler(this: UsersThis, ctx: Ctx<{ id: number; roles: string[] }>) {
				const caller = userOf(ctx);
				const { id, roles } = ctx.params;
				let changing = false;
				await this.sequelize
					.transaction(async tx => {
						// One role change at a time: two admins demoting each other at once must not leave none,
						// and an admin demoted a moment ago changes nothing.
						await this.lockRoleChanges(tx);
						if (!((await this.rolesOf([caller.id], tx)).get(caller.id) ?? []).includes("admin")) throw forbidden("Only an admin may change roles");
						const user = await this.lockUser(id, tx, "update");
						if (!user) throw notFound("User");
						const current = (await this.rolesOf([id], tx)).get(id) ?? [];
						if (sameSet(current, roles)) return;
						if (current.includes("admin") && !roles.includes("admin") && (await this.adminCount(tx)) <= 1) {
							throw conflict("The last admin cannot lose the admin role");
						}
						changing = true;
						await this.setRoles(id, roles, tx);
						// Tokens carry the roles: the ones issued before end (a refresh gives the new roles).
						const [row] = await this.sequelize.query<{ token_version: number }>(
							"UPDATE users SET token_version = token_version + 1, updated_at = now() WHERE id = :id RETURNING token_version",
							{ replacements: { id }, type: QueryTypes.SELECT, transaction: tx },
						);
						await this.revokeSessions(ctx, { userId: id, minVersion: row.token_version, reason: "roles_changed" }, tx);
					})
					// Cached profiles carry the roles: a demoted admin is no admin anywhere once this answers.
					.finally(() => changing && this.profilesChanged([id], ctx.requestID));
				const user = (await this.profilesOf([id])).get(id);
				if (!user) throw notFound("User");
				return this.presentOne(user, caller, ctx);
			},
		},

		/** For the gateways: every ended session whose access tokens may still be unexpired (not routed). */
		revocations: {
			visibility: "public",
			async handler(this: UsersThis): Promise<ActionResult<"users.revocations">> {
				const window = config.accessTokenTtlSeconds + REVOCATION_MARGIN_SECONDS;
				const rows = await this.sequelize.query<{ user_id: number; family_id: string | null; min_version: number | null; all_tokens: boolean; reason: RevocationReason; created_at: Date }>(
					`SELECT user_id, family_id, min_version, all_tokens, reason, created_at FROM session_revocations
					 WHERE created_at > now() - make_interval(secs => :window) ORDER BY id`,
					{ replacements: { window }, type: QueryTypes.SELECT },
				);
				return rows.map(r => {
					const out: SessionRevocation = { userId: r.user_id, reason: r.reason, until: new Date(r.created_at).getTime() + window * 1000 };
					if (r.family_id) out.sid = r.family_id;
					if (r.min_version !== null) out.minVersion = r.min_version;
					if (r.all_tokens) out.all = true;
					return out;
				});
			},
		},

		/** For the files service, before it deletes files: which of these are some user's avatar (not routed). */
		fileRefs: {
			visibility: "public",
			params: { fileIds: { type: "array", max: 1000, items: { type: "string", max: 64 } } },
			async handler(this: UsersThis, ctx: Ctx<{ fileIds: string[] }>) {
				const ids = [...new Set(ctx.params.fileIds)].filter(id => FILE_ID_PATTERN.test(id));
				if (ids.length === 0) return [];
				const rows = await this.sequelize.query<{ avatar_url: string }>("SELECT DISTINCT avatar_url FROM users WHERE length(avatar_url) <= 64 AND avatar_url IN (:urls)", {
					replacements: { urls: ids.map(id => `/files/${id}`) },
					type: QueryTypes.SELECT,
				});
				const used = new Set(rows.map(r => r.avatar_url));
				return ids.filter(id => used.has(`/files/${id}`));
			},
		},

		/** For other services: user ids in order, a page at a time (admin broadcasts). */
		ids: {
			visibility: "public",
			params: { afterId: { type: "number", integer: true, min: 0, default: 0 }, limit: { type: "number", integer: true, min: 1, max: 1000, default: 500 } },
			async handler(this: UsersThis, ctx: Ctx<{ afterId: number; limit: number }>): Promise<ActionResult<"users.ids">> {
				const rows = await this.sequelize.query<{ id: number }>("SELECT id FROM users WHERE id > :afterId ORDER BY id LIMIT :limit", {
					replacements: ctx.params,
					type: QueryTypes.SELECT,
				});
				return rows.map(r => r.id);
			},
		},

		/** For other services: how many accounts there are. */
		count: {
			visibility: "public",
			async handler(this: UsersThis): Promise<ActionResult<"users.count">> {
				return this.models.User.count();
			},
		},

		/** For other services: is this user an admin now (from the database, not a token)? */
		isAdmin: {
			visibility: "public",
			params: { userId: { type: "number", integer: true, positive: true } },
			async handler(this: UsersThis, ctx: Ctx<{ userId: number }>) {
				const roles = (await this.rolesOf([ctx.params.userId])).get(ctx.params.userId) ?? [];
				return roles.includes("admin");
			},
		},

		/** For other services: public profiles by id (not routed by the gateway). */
		resolve: {
			visibility: "public",
			params: { ids: { type: "array", max: 1000, items: { type: "number", integer: true, positive: true } } },
			async handler(this: UsersThis, ctx: Ctx<{ ids: number[] }>): Promise<ActionResult<"users.resolve">> {
				// Cached profiles as they are; one query for the ones missing. Unknown (or deleted) ids are left out.
				const ids = [...new Set(ctx.params.ids)];
				const byId = await this.profilesOf(ids);
				return this.present(ids.map(id => byId.get(id)).filter((p): p is Profile => !!p), null, ctx);
			},
		},

		/** For a gateway (presence:subscribe): these users' presence as the viewer may see it, in the order asked (not routed). */
		presenceOf: {
			visibility: "public",
			params: {
				viewerId: { type: "number", integer: true, positive: true },
				ids: { type: "array", max: MAX_SUBSCRIPTIONS_PER_SOCKET, items: { type: "number", integer: true, positive: true } },
			},
			async handler(this: UsersThis, ctx: Ctx<{ viewerId: number; ids: number[] }>): Promise<PresenceEntry[]> {
				const ids = [...new Set(ctx.params.ids)];
				const profiles = await this.profilesOf([ctx.params.viewerId, ...ids]);
				const views = await this.presenceViews(ctx, ids, ctx.params.viewerId, profiles);
				return ids.map(id => views.get(id) ?? { userId: id, status: "offline", last_seen_at: null });
			},
		},

		/** Each users node: drop these cached profiles, called by the node that changed them (not routed). */
		forgetProfiles: {
			visibility: "public",
			params: { ids: { type: "array", max: 1000, items: { type: "number", integer: true, positive: true } } },
			async handler(this: UsersThis, ctx: Context<{ ids: number[] }>) {
				await this.forgetProfiles(ctx.params.ids);
				return null;
			},
		},
	},

	events: {
		/** A gateway's presence changes (every users node gets each). */
		[EVENTS.presenceDelta](this: UsersThis, ctx: Context<PresenceDelta>) {
			this.presenceReceive(ctx.params);
		},
		/** A gateway that left, or died without a word (15 s of silence): its users are not online through it any more. */
		"$node.disconnected"(this: UsersThis, ctx: Context<{ node: { id: string } }>) {
			this.presenceLeaderID = null;
			this.presenceGatewayLeft(ctx.params.node.id);
		},
		/** A node (back) in the cluster: if it is a gateway, what we knew of it is stale; its state is pulled. */
		"$node.connected"(this: UsersThis, ctx: Context<{ node: { id: string } }>) {
			this.presenceLeaderID = null;
			const gateway = ctx.params.node.id;
			if (this.presenceSync.has(gateway)) void this.presenceSyncGateway(gateway);
		},
		"$services.changed"(this: UsersThis) {
			this.presenceLeaderID = null;
			this.presenceSyncAll();
		},
		/** After a reconnect, deltas sent meanwhile may be lost: every gateway's state is pulled again. */
		"$transporter.connected"(this: UsersThis) {
			if (this.presenceConnectedOnce) for (const gateway of this.presenceSync.keys()) void this.presenceSyncGateway(gateway);
			this.presenceConnectedOnce = true;
		},
	},

	methods: {
		/** A gateway's delta: applied in order; a gap (or another incarnation of the gateway) pulls its full state. */
		presenceReceive(this: UsersThis, delta: PresenceDelta) {
			const sync = this.presenceSync.get(delta.gateway);
			if (sync?.waiting) return void sync.waiting.push(delta);
			if (delta.resync || !sync || sync.epoch !== delta.epoch || delta.seq !== sync.seq + 1) {
				if (sync && sync.epoch === delta.epoch && delta.seq <= sync.seq) return; // seen already
				void this.presenceSyncGateway(delta.gateway);
				if (!delta.resync) this.presenceSync.get(delta.gateway)?.waiting?.push(delta);
				return;
			}
			sync.seq = delta.seq;
			this.presenceChanged(this.presence.apply(delta, Date.now()));
		},

		/**
		 * Pull a gateway's full state (`api.presenceState`) and replay on it the deltas that came
		 * meanwhile. The differences from what this node knew are changes like any other.
		 */
		async presenceSyncGateway(this: UsersThis, gateway: string) {
			const known = this.presenceSync.get(gateway);
			if (known?.waiting) return;
			const waiting: PresenceDelta[] = [];
			this.presenceSync.set(gateway, { epoch: known?.epoch ?? null, seq: known?.seq ?? 0, waiting });
			let state: GatewayPresenceState;
			try {
				state = (await this.broker.call("api.presenceState", {}, { nodeID: gateway, timeout: 5_000, retries: 0 })) as GatewayPresenceState;
			} catch (err) {
				// Gone, or not a gateway after all: nothing to know of it. Still there: pulled again on its next delta.
				this.presenceSync.delete(gateway);
				if (this.broker.registry.nodes.get(gateway)?.available && gatewayNodes(this.broker).includes(gateway)) {
					this.logger.warn(`Presence: no state from gateway ${gateway} (${(err as Error).message}); asked again in 2 s`);
					setTimeout(() => this.presenceSync.has(gateway) || void this.presenceSyncGateway(gateway), 2_000).unref();
				}
				return;
			}
			if (this.presenceSync.get(gateway)?.waiting !== waiting) return; // the gateway left meanwhile
			const now = Date.now();
			const changed = new Set(this.presence.replaceGateway(gateway, state, now));
			let seq = state.seq;
			let gap = false;
			for (const delta of waiting.sort((a, b) => a.seq - b.seq)) {
				if (delta.epoch !== state.epoch || delta.seq <= seq || delta.resync) continue;
				if (delta.seq !== seq + 1) gap = true;
				for (const id of this.presence.apply(delta, now)) changed.add(id);
				seq = delta.seq;
			}
			this.presenceSync.set(gateway, { epoch: state.epoch, seq, waiting: null });
			this.presenceChanged([...changed]);
			if (gap) void this.presenceSyncGateway(gateway);
		},

		/** Every gateway of the cluster not met yet: its state is pulled (at start, and as gateways come). */
		presenceSyncAll(this: UsersThis) {
			for (const gateway of gatewayNodes(this.broker)) if (!this.presenceSync.has(gateway)) void this.presenceSyncGateway(gateway);
		},

		presenceGatewayLeft(this: UsersThis, gateway: string) {
			if (!this.presenceSync.delete(gateway)) return;
			this.presenceChanged(this.presence.dropGateway(gateway, Date.now()));
		},

		/** Changes of the cluster's presence: the leader fans them out, batched. */
		presenceChanged(this: UsersThis, userIds: number[]) {
			if (userIds.length === 0 || !this.presenceIsLeader()) return;
			for (const id of userIds) this.presenceQueue.add(id);
			if (this.presenceTimer) return;
			this.presenceTimer = setTimeout(() => {
				this.presenceTimer = null;
				const ids = [...this.presenceQueue];
				this.presenceQueue.clear();
				this.presenceFanout(ids).catch(err => this.logger.warn(`Presence fan-out failed: ${(err as Error).message}`));
			}, FANOUT_BATCH_MS);
		},

		/**
		 * One users node fans out: the oldest one (by the time its service started, then by node id),
		 * so that a users node joining does not take over, and every node can tell which one it is.
		 */
		presenceIsLeader(this: UsersThis) {
			if (!this.presenceLeaderID) {
				const nodes = (this.broker.registry.getServiceList({ onlyAvailable: true }) as { name: string; nodeID: string; metadata?: { presenceSince?: number } }[])
					.filter(s => s.name === "users")
					.map(s => ({ id: s.nodeID, since: Number(s.metadata?.presenceSince ?? 0) }))
					.sort((a, b) => a.since - b.since || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
				this.presenceLeaderID = nodes[0]?.id ?? this.broker.nodeID;
			}
			return this.presenceLeaderID === this.broker.nodeID;
		},

		/**
		 * Each changed user's presence to its receivers: the gateways with sockets subscribed to it,
		 * and those holding its private-chat partners. One push per gateway for the whole batch;
		 * one blockRelations call per user (not per receiver). An offline transition writes
		 * last_seen_at (one idempotent UPDATE for the batch).
		 */
		async presenceFanout(this: UsersThis, userIds: number[]) {
			const now = Date.now();
			const perGateway = new Map<string, PresenceFanout[]>();
			await Promise.all(userIds.map(id => this.presenceFanoutOne(id, now, perGateway)));
			await Promise.all(
				[...perGateway].map(([gateway, entries]) =>
					broadcastToNodes(this.broker, new Set([gateway]), EVENTS.presencePush, { entries }, ["api"]).catch((err: Error) =>
						this.logger.warn(`Presence changes not sent to ${gateway}: ${err.message}`),
					),
				),
			);
			const offline: { id: number; at: string }[] = [];
			for (const id of userIds) {
				const d = this.presence.derived(id);
				if (d.status === "offline" && d.at !== null) offline.push({ id, at: new Date(d.at).toISOString() });
			}
			if (offline.length === 0) return;
			try {
				await this.sequelize.query(
					`UPDATE users u SET last_seen_at = v.at
					 FROM (SELECT unnest(ARRAY[:ids]::int[]) AS id, unnest(ARRAY[:ats]::timestamptz[]) AS at) v
					 WHERE u.id = v.id AND (u.last_seen_at IS NULL OR u.last_seen_at < v.at)`,
					{ replacements: { ids: offline.map(o => o.id), ats: offline.map(o => o.at) } },
				);
			} catch (err) {
				// The nodes remember it for OFFLINE_MEMORY_MS; after that the previous last seen shows.
				this.logger.warn(`last_seen_at of ${offline.length} user(s) not written: ${(err as Error).message}`);
			}
		},

		async presenceFanoutOne(this: UsersThis, userId: number, now: number, perGateway: Map<string, PresenceFanout[]>) {
			const watchers = this.presence.watchersOf(userId);
			let partners: number[] = [];
			try {
				partners = (await this.broker.call("conversations.privatePartners", { userId })) as number[];
			} catch (err) {
				const e = err as { type?: string; name?: string; message?: string };
				// No chat in this cluster: no partners. Otherwise the subscribers still get it.
				if (e.type !== "SERVICE_NOT_FOUND" && e.name !== "ServiceNotFoundError") this.logger.warn(`Presence: private partners of ${userId} unknown (${e.message})`);
			}
			// Partners without a socket anywhere receive nothing.
			const livePartners = (Array.isArray(partners) ? partners : []).filter(p => p !== userId && this.presence.isPresent(p));
			const receivers = new Set<number>(livePartners);
			for (const subs of watchers.values()) for (const s of subs) receivers.add(s);
			if (receivers.size === 0) return;
			const others = [...receivers].filter(r => r !== userId);
			const [blocked, profiles] = await Promise.all([others.length > 0 ? this.blockedAmong(undefined, userId, others) : new Set<number>(), this.profilesOf([userId, ...receivers])]);
			const target = profiles.get(userId);
			const d = this.presence.derived(userId);
			// A deleted user is offline with no last seen; one who hides it, hides it from everyone.
			const base: PresenceFanout = {
				userId,
				status: target ? d.status : "offline",
				last_seen_at: target && target.show_last_seen && d.status !== "online" ? this.lastSeenOf(target, d.at) : null,
			};
			const byGateway = new Map<string, { receivers: Set<number>; partners: number[] }>();
			const slot = (gateway: string) => {
				let entry = byGateway.get(gateway);
				if (!entry) byGateway.set(gateway, (entry = { receivers: new Set(), partners: [] }));
				return entry;
			};
			for (const [gateway, subs] of watchers) for (const s of subs) slot(gateway).receivers.add(s);
			for (const p of livePartners) {
				for (const gateway of this.presence.gatewaysOf(p)) {
					const entry = slot(gateway);
					entry.receivers.add(p);
					entry.partners.push(p);
				}
			}
			for (const [gateway, here] of byGateway) {
				const fanout: PresenceFanout = { ...base };
				const offlineFor = [...here.receivers].filter(r => blocked.has(r));
				const hideSeenFor = base.last_seen_at ? [...here.receivers].filter(r => r !== userId && !blocked.has(r) && profiles.get(r)?.show_last_seen === false) : [];
				if (offlineFor.length > 0) fanout.offlineFor = offlineFor;
				if (hideSeenFor.length > 0) fanout.hideSeenFor = hideSeenFor;
				if (here.partners.length > 0) fanout.partners = here.partners;
				const list = perGateway.get(gateway);
				if (list) list.push(fanout);
				else perGateway.set(gateway, [fanout]);
			}
		},

		/**
		 * The presence of `targets` as the viewer may see it (null: another service, no viewer):
		 * `profiles` must hold the targets that exist (and the viewer). Unknown or deleted users are
		 * offline with no last seen. One blockRelations call, for the targets that have something to hide.
		 */
		async presenceViews(this: UsersThis, ctx: Ctx<unknown> | undefined, targets: number[], viewerId: number | null, profiles: Map<number, Profile>) {
			const raw = new Map<number, { status: PresenceStatus; lastSeenAt: string | null; hidesLastSeen: boolean }>();
			for (const id of targets) {
				const profile = profiles.get(id);
				if (!profile) continue;
				const d = this.presence.derived(id);
				raw.set(id, { status: d.status, lastSeenAt: d.status === "online" ? null : this.lastSeenOf(profile, d.at), hidesLastSeen: !profile.show_last_seen });
			}
			const viewerProfile = viewerId === null ? undefined : profiles.get(viewerId);
			const viewer = viewerId === null ? null : { id: viewerId, hidesLastSeen: viewerProfile ? !viewerProfile.show_last_seen : false };
			// Only a target that shows something (not offline, or a last seen) can be hidden by a block.
			const exposed = [...raw].filter(([id, r]) => id !== viewerId && (r.status !== "offline" || r.lastSeenAt !== null)).map(([id]) => id);
			const blocked = viewer && exposed.length > 0 ? await this.blockedAmong(ctx, viewer.id, exposed) : new Set<number>();
			const out = new Map<number, PresenceEntry>();
			for (const id of targets) {
				const r = raw.get(id);
				out.set(id, r ? presenceFor({ id, ...r }, viewer, blocked.has(id)) : { userId: id, status: "offline", last_seen_at: null });
			}
			return out;
		},

		/** A user's last seen: this node's memory of a recent offline transition, or its profile's. */
		lastSeenOf(profile: Profile | undefined, at: number | null) {
			const stored = profile?.last_seen_at ? Date.parse(profile.last_seen_at) : null;
			const best = at !== null && (stored === null || at > stored) ? at : stored;
			return best === null ? null : new Date(best).toISOString();
		},

		async findUser(this: UsersThis, id: number, tx?: Transaction) {
			return (await this.models.User.findByPk(id, { raw: true, transaction: tx })) as unknown as UserRow | null;
		},

		async lockUser(this: UsersThis, id: number, tx: Transaction, mode: "share" | "update") {
			const [row] = await this.sequelize.query<UserRow>(`SELECT * FROM users WHERE id = :id FOR ${mode === "share" ? "SHARE" : "UPDATE"}`, {
				replacements: { id },
				type: QueryTypes.SELECT,
				transaction: tx,
			});
			return row ?? null;
		},

		async findUserByLogin(this: UsersThis, field: "email" | "username", value: string) {
			const [row] = await this.sequelize.query<UserRow>(`SELECT * FROM users WHERE lower(${field}) = :value`, {
				replacements: { value: value.trim().toLowerCase() },
				type: QueryTypes.SELECT,
			});
			return row ?? null;
		},

		async rolesOf(this: UsersThis, ids: number[], tx?: Transaction) {
			const out = new Map<number, string[]>(ids.map(id => [id, []]));
			if (ids.length === 0) return out;
			const rows = await this.sequelize.query<{ user_id: number; name: string }>(
				"SELECT ur.user_id, r.name FROM user_role ur JOIN roles r ON r.id = ur.role_id WHERE ur.user_id IN (:ids) ORDER BY r.id",
				{ replacements: { ids }, type: QueryTypes.SELECT, transaction: tx },
			);
			for (const row of rows) out.get(row.user_id)?.push(row.name);
			return out;
		},

		/**
		 * Profiles of these ids that exist: from the cache, the others from the database in one
		 * query (then cached). Never a secret or a counter, never presence (computed when presented).
		 */
		async profilesOf(this: UsersThis, ids: number[]) {
			const out = new Map<number, Profile>();
			const unique = [...new Set(ids)];
			if (unique.length === 0) return out;
			// A Redis known to be away is not waited for (its commands would only time out).
			const cacher = this.broker.cacher && (this.broker.cacher as { connected?: boolean | null }).connected !== false ? this.broker.cacher : null;
			let missing = unique;
			if (cacher) {
				const hits = await Promise.all(
					unique.map(id =>
						(cacher.get(profileKey(id)) as Promise<Profile | null>).catch(err => {
							this.cacheTrouble("read", err);
							return null;
						}),
					),
				);
				const fresh = Date.now() - PROFILE_TTL_SECONDS * 1000;
				missing = [];
				unique.forEach((id, i) => {
					const hit = hits[i];
					if (hit && hit.id === id && hit.at > fresh) out.set(id, hit);
					else missing.push(id);
				});
				if (missing.length === 0) return out;
			}
			// Taken before reading: a cleaning meanwhile (a change committed while we read) means what
			// we read may be older than it, so it is answered but not stored.
			const epoch = this.profileEpoch;
			const loaded = await this.loadProfiles(missing);
			const store = cacher && this.profileEpoch === epoch;
			for (const profile of loaded) {
				out.set(profile.id, profile);
				// Issued at once after the check: a later cleaning's DEL follows it on the same connection.
				if (store) cacher.set(profileKey(profile.id), profile, PROFILE_TTL_SECONDS).catch(err => this.cacheTrouble("write", err));
			}
			return out;
		},

		/** Profiles straight from the database: the rows and their roles in one query. */
		async loadProfiles(this: UsersThis, ids: number[]) {
			const at = Date.now();
			const rows = await this.sequelize.query<Omit<Profile, "at">>(
				`SELECT u.id, u.username, u.email, u.avatar_url, u.bio, u.show_last_seen, u.last_seen_at, u.created_at, u.updated_at,
					COALESCE(array_agg(r.name ORDER BY r.id) FILTER (WHERE r.id IS NOT NULL), '{}') AS roles
				 FROM users u LEFT JOIN user_role ur ON ur.user_id = u.id LEFT JOIN roles r ON r.id = ur.role_id
				 WHERE u.id IN (:ids) GROUP BY u.id`,
				{ replacements: { ids }, type: QueryTypes.SELECT },
			);
			return rows.map(row => profileOf(row, row.roles, at));
		},

		/** Rows read by a query of their own (list, search, login…), with their roles. */
		async withRoles(this: UsersThis, rows: UserRow[]) {
			const at = Date.now();
			const roles = await this.rolesOf(rows.map(r => r.id));
			return rows.map(row => profileOf(row, roles.get(row.id) ?? [], at));
		},

		/**
		 * After a change of these accounts' rows or roles (committed, rolled back or unknown: called
		 * in a finally): this node's cache and every other users node's are cleaned before the change
		 * is answered, so the next read anywhere, on any node, sees it. Each node also raises its
		 * epoch, so a read that began before the commit does not store the old profile afterwards.
		 * With Redis the entry is shared and this node's DEL removes it; the other nodes' calls are
		 * still needed for their epochs (and each DELs again, behind any SET it had in flight).
		 * A node that cannot be reached keeps what it has for at most PROFILE_TTL_SECONDS.
		 */
		async profilesChanged(this: UsersThis, ids: number[], requestID?: string | null) {
			await this.forgetProfiles(ids);
			await forgetOnOtherNodes(this.broker, "users.forgetProfiles", { ids }, FORGET_TIMEOUT_MS, requestID);
		},

		/** This node: no read in flight stores an older profile, and the cached ones go. Never throws. */
		async forgetProfiles(this: UsersThis, ids: number[]) {
			this.profileEpoch++;
			const cacher = this.broker.cacher;
			if (!cacher || ids.length === 0) return;
			try {
				await cacher.del(ids.map(profileKey));
			} catch (err) {
				this.cacheTrouble("clean", err);
			}
		},

		/** The cache is an optimisation: its failures are logged (at most every 10 s) and read through. */
		cacheTrouble(this: UsersThis, what: string, err: unknown) {
			if (Date.now() - this.lastCacheWarning < 10_000) return;
			this.lastCacheWarning = Date.now();
			this.logger.warn(`Profile cache ${what} failed (${(err as Error)?.message ?? err}); reading the database instead`);
		},

		async present(this: UsersThis, profiles: Profile[], viewer: AuthUser | null | undefined, ctx?: Ctx<unknown>) {
			const viewerId = viewer?.id;
			// Who sees emails is decided by the viewer's current roles (its profile, cleaned on every
			// role change), not by its (older) token.
			const byId = new Map(profiles.map(p => [p.id, p]));
			let viewerIsAdmin = false;
			if (viewerId !== undefined) {
				const own = byId.get(viewerId) ?? (await this.profilesOf([viewerId])).get(viewerId);
				viewerIsAdmin = !!own?.roles.includes("admin");
				// The viewer's own show_last_seen hides the others' last seen from it.
				if (own) byId.set(viewerId, own);
			}
			// Presence with the privacy rules: blocks either way show offline, show_last_seen hides the last seen.
			const views = await this.presenceViews(ctx, profiles.map(p => p.id), viewerId ?? null, byId);
			return profiles.map(row => {
				// A copy: a cached profile is shared (MemoryLRU hands out the stored object).
				const userRoles = [...row.roles];
				const out: PublicUser = {
					user_id: row.id,
					id: row.id,
					username: row.username,
					// An avatar stored before they had to be files of this server is not shown.
					avatar_url: this.avatarFileId(row.avatar_url) ? row.avatar_url : null,
					bio: row.bio,
					status: views.get(row.id)?.status ?? "offline",
					last_seen_at: views.get(row.id)?.last_seen_at ?? null,
					role: primaryRole(userRoles),
					roles: userRoles,
					created_at: new Date(row.created_at).toISOString(),
					updated_at: new Date(row.updated_at).toISOString(),
				};
				// The email and the privacy setting are private: the user itself and admins see them.
				if (viewer && (viewer.id === row.id || viewerIsAdmin)) return { ...out, email: row.email, show_last_seen: row.show_last_seen };
				return out;
			});
		},

		async presentOne(this: UsersThis, profile: Profile, viewer: AuthUser | null | undefined, ctx?: Ctx<unknown>) {
			const [out] = await this.present([profile], viewer, ctx);
			return out;
		},

		/** Which of `others` have a block with the viewer, either way (the conversations service owns blocks). */
		async blockedAmong(this: UsersThis, ctx: Ctx<unknown> | undefined, viewerId: number, others: number[]) {
			const params = { userId: viewerId, others };
			try {
				const ids = ctx ? await ctx.call("conversations.blockRelations", params) : await this.broker.call("conversations.blockRelations", params);
				if (!Array.isArray(ids)) throw new Error("conversations.blockRelations did not answer a list");
				return new Set(ids.map(Number));
			} catch (err) {
				const e = err as { type?: string; name?: string; message?: string };
				// No chat in this cluster: there are no blocks.
				if (e.type === "SERVICE_NOT_FOUND" || e.name === "ServiceNotFoundError") return new Set<number>();
				// Unknown: better offline than telling a blocked user that its blocker is there.
				this.logger.warn(`Blocks unknown (${e.message}); showing ${others.length} user(s) offline`);
				return new Set(others);
			}
		},

		async issueTokens(this: UsersThis, ctx: Ctx<unknown>, user: UserRow, familyId?: string, tx?: Transaction) {
			const roles = (await this.rolesOf([user.id], tx)).get(user.id) ?? [];
			const refreshToken = newRefreshToken();
			const family = familyId ?? crypto.randomUUID();
			await this.sequelize.query(
				`INSERT INTO tokens (user_id, token_hash, family_id, expires_at, user_agent, ip)
				 VALUES (:userId, :hash, :family, :expires, :ua, :ip)`,
				{
					replacements: {
						userId: user.id,
						hash: hashRefreshToken(refreshToken),
						family,
						expires: new Date(Date.now() + config.refreshTokenTtlSeconds * 1000),
						ua: ctx.meta.userAgent?.slice(0, 256) ?? null,
						ip: ctx.meta.clientIp?.slice(0, 64) ?? null,
					},
					transaction: tx,
				},
			);
			if (!familyId) {
				// Housekeeping at login: this user's long-expired tokens are of no use to anyone.
				await this.sequelize.query("DELETE FROM tokens WHERE user_id = :id AND expires_at < now() - interval '1 day'", {
					replacements: { id: user.id },
					transaction: tx,
				});
			}
			// The access token names its login and the account's version, so that either can be revoked.
			const accessToken = signAccessToken({ id: user.id, username: user.username, roles }, { sid: family, ver: user.token_version ?? 0 });
			return { accessToken, refreshToken };
		},

		/** End a login's refresh tokens; how many were still alive. */
		async revokeFamily(this: UsersThis, familyId: string, tx: Transaction, userId?: number) {
			const rows = await this.sequelize.query<{ id: string }>(
				`UPDATE tokens SET revoked_at = now() WHERE family_id = :familyId AND revoked_at IS NULL${userId === undefined ? "" : " AND user_id = :userId"} RETURNING id`,
				{ replacements: { familyId, userId: userId ?? null }, type: QueryTypes.SELECT, transaction: tx },
			);
			return rows.length;
		},

		/**
		 * Record that sessions ended (in `tx`, with the change that ends them) and, once that is
		 * committed, tell every gateway node, which then refuses those access tokens and drops their sockets.
		 */
		async revokeSessions(this: UsersThis, ctx: Ctx<unknown>, revocation: Revocation, tx?: Transaction) {
			await this.sequelize.query(
				"INSERT INTO session_revocations (user_id, family_id, min_version, all_tokens, reason) VALUES (:userId, :sid, :minVersion, :all, :reason)",
				{
					replacements: { userId: revocation.userId, sid: revocation.sid ?? null, minVersion: revocation.minVersion ?? null, all: !!revocation.all, reason: revocation.reason },
					transaction: tx,
				},
			);
			const announce = () => {
				const payload: SessionRevocation = {
					userId: revocation.userId,
					reason: revocation.reason,
					until: Date.now() + (config.accessTokenTtlSeconds + REVOCATION_MARGIN_SECONDS) * 1000,
				};
				if (revocation.sid) payload.sid = revocation.sid;
				if (revocation.minVersion !== undefined) payload.minVersion = revocation.minVersion;
				if (revocation.all) payload.all = true;
				// A gateway that misses it still learns it from users.revocations within a minute.
				void broadcastEvent(ctx, EVENTS.sessionsRevoked, payload, ["api"]);
				void this.pruneRevocations();
			};
			if (tx) tx.afterCommit(announce);
			else announce();
		},

		/** Now and then: rows no unexpired token can match any more go (outside any transaction). */
		async pruneRevocations(this: UsersThis) {
			if (Date.now() - this.lastRevocationPrune < REVOCATION_PRUNE_EVERY_MS) return;
			this.lastRevocationPrune = Date.now();
			try {
				await this.sequelize.query("DELETE FROM session_revocations WHERE created_at < now() - make_interval(secs => :keep)", {
					replacements: { keep: config.accessTokenTtlSeconds + REVOCATION_MARGIN_SECONDS + REVOCATION_KEEP_SECONDS },
				});
			} catch (err) {
				this.logger.warn(`Could not prune session revocations: ${(err as Error).message}`);
			}
		},

		/**
		 * Count one password attempt for the account before comparing (bcrypt is slow, and parallel
		 * guesses must not all read the same count): one atomic statement, which changes nothing
		 * while the account waits. Throws 429 then.
		 */
		async countPasswordAttempt(this: UsersThis, userId: number) {
			const counted = await this.sequelize.query<{ failed_logins: number }>(
				`UPDATE users SET failed_logins = failed_logins + 1,
					login_blocked_until = CASE WHEN failed_logins + 1 >= :free
						THEN now() + LEAST(:max, power(2, LEAST(failed_logins + 1 - :free, 20))) * interval '1 second'
						ELSE login_blocked_until END
				 WHERE id = :id AND (login_blocked_until IS NULL OR login_blocked_until <= now())
				 RETURNING failed_logins`,
				{ replacements: { id: userId, free: FREE_FAILED_LOGINS, max: MAX_LOGIN_BLOCK_SECONDS }, type: QueryTypes.SELECT },
			);
			if (counted.length > 0) return;
			const [row] = await this.sequelize.query<{ wait: string | number | null }>("SELECT EXTRACT(EPOCH FROM login_blocked_until - now()) AS wait FROM users WHERE id = :id", {
				replacements: { id: userId },
				type: QueryTypes.SELECT,
			});
			if (!row) throw invalidCredentials();
			throw rateLimited(Number(row.wait ?? 1));
		},

		/** The caller's own password, counted like a login; the caller's row when it is right. */
		async checkOwnPassword(this: UsersThis, userId: number, password: string) {
			const user = await this.findUser(userId);
			if (!user) throw unauthorized("This account no longer exists");
			await this.countPasswordAttempt(userId);
			if (!(await this.passwords.compare(password, user.password_hash))) throw invalidCredentials();
			await this.sequelize.query("UPDATE users SET failed_logins = 0, login_blocked_until = NULL WHERE id = :id", { replacements: { id: userId } });
			return user;
		},

		/** A hash to compare against for an unknown account, as slow as a real one (no enumeration by timing). */
		dummyHash(this: UsersThis) {
			const rounds = config.bcryptRounds;
			if (!this.dummy || this.dummy.rounds !== rounds) {
				const dummy = { rounds, hash: this.passwords.hash(crypto.randomBytes(16).toString("hex"), rounds) };
				// Made again next time if the pool was too busy to make it now.
				dummy.hash.catch(() => this.dummy === dummy && (this.dummy = null));
				this.dummy = dummy;
			}
			return this.dummy.hash;
		},

		async createUser(this: UsersThis, input) {
			const hash = await this.passwords.hash(input.password, config.bcryptRounds);
			let createdId: number | null = null;
			try {
				return await this.sequelize.transaction(async tx => {
					const created = await this.models.User.create(
						{ username: input.username, email: input.email.toLowerCase(), password_hash: hash, status: "offline", origin: input.origin ?? "register" } as UserRow,
						{ transaction: tx },
					);
					const row = created.get({ plain: true }) as UserRow;
					createdId = row.id;
					await this.setRoles(row.id, input.roles, tx);
					return (await this.findUser(row.id, tx)) as UserRow;
				});
			} catch (err) {
				this.uniqueViolation(err);
			} finally {
				// A new id is in no cache, unless one outlived its database (a Redis kept across a reset).
				if (createdId !== null) await this.profilesChanged([createdId]);
			}
		},

		async setRoles(this: UsersThis, userId: number, roles: string[], tx: Transaction) {
			await this.sequelize.query("DELETE FROM user_role WHERE user_id = :userId", { replacements: { userId }, transaction: tx });
			await this.sequelize.query("INSERT INTO user_role (user_id, role_id) SELECT :userId, id FROM roles WHERE name IN (:roles)", {
				replacements: { userId, roles },
				transaction: tx,
			});
		},

		/** Serialises the transactions that may take the admin role away (role changes, deletions). */
		async lockRoleChanges(this: UsersThis, tx: Transaction) {
			await this.sequelize.query("SELECT id FROM roles WHERE name = 'admin' FOR NO KEY UPDATE", { transaction: tx });
		},

		/** Roles are read from the database, not trusted from the token, for admin-only acts. */
		async callerIsAdmin(this: UsersThis, ctx: Ctx<unknown>) {
			const caller = userOf(ctx);
			const roles = (await this.rolesOf([caller.id])).get(caller.id) ?? [];
			return roles.includes("admin");
		},

		async adminCount(this: UsersThis, tx: Transaction) {
			const [row] = await this.sequelize.query<{ n: string }>(
				"SELECT count(*) AS n FROM user_role ur JOIN roles r ON r.id = ur.role_id WHERE r.name = 'admin'",
				{ type: QueryTypes.SELECT, transaction: tx },
			);
			return Number(row.n);
		},

		checkPasswordBytes(field: string, password: string) {
			// bcrypt reads only the first 72 bytes; a longer password would be silently truncated.
			if (Buffer.byteLength(password, "utf8") > 72) {
				throw validationError("Password too long", [{ field, type: "stringMax", message: "At most 72 bytes" }]);
			}
		},

		uniqueViolation(err: unknown): never {
			if (err instanceof UniqueConstraintError) {
				const text = JSON.stringify(err.errors?.map(e => e.path)) + String((err.parent as { constraint?: string } | undefined)?.constraint ?? "");
				const field = text.includes("email") ? "email" : "username";
				throw conflict(`This ${field} is already taken`, [{ field }]);
			}
			throw err;
		},

		avatarFileId(url: string | null | undefined) {
			return fileIdOfPath(url);
		},

		/** Files no longer an avatar here: the files service deletes them unless something else uses them. */
		releaseFiles(this: UsersThis, ctx: Ctx<unknown>, urls: (string | null | undefined)[]) {
			const fileIds = [...new Set(urls.map(u => this.avatarFileId(u)).filter((id): id is string => !!id))];
			if (fileIds.length === 0) return;
			// In the background, with a context of its own: the change is done, a file left over is only space.
			this.broker
				.call("files.release", { fileIds }, { meta: { user: ctx.meta.user ?? null, traceId: ctx.meta.traceId }, requestID: ctx.requestID ?? undefined })
				.catch((err: Error) => this.logger.warn(`Could not release file(s) ${fileIds.join(", ")}: ${err.message}`));
		},

		/**
		 * ADMIN_EMAIL / ADMIN_PASSWORD: create that admin account once. An account the bootstrap did
		 * not create is never promoted (whoever registered the address first would become admin).
		 */
		async bootstrapAdmin(this: UsersThis) {
			const email = config.adminEmail?.trim().toLowerCase() || null;
			const password = config.adminPassword;
			const username = config.adminUsername;
			if (!email && !password) return;
			if (!email || !password) {
				this.logger.warn("Admin bootstrap skipped: ADMIN_EMAIL and ADMIN_PASSWORD must be set together");
				return;
			}
			if (password.length < 8 || Buffer.byteLength(password, "utf8") > 72) {
				throw this.bootstrapRefusal("ADMIN_PASSWORD must be at least 8 characters and at most 72 bytes, like every password; set a valid one");
			}
			if (email.length > 254 || !EMAIL_LIKE.test(email)) throw this.bootstrapRefusal(`ADMIN_EMAIL "${email}" is not an email address; set a valid one`);
			if (!USERNAME.test(username)) {
				throw this.bootstrapRefusal(`ADMIN_USERNAME "${username}" is not a valid username (3 to 32 letters, digits, '_', '.' or '-'); set a valid one`);
			}
			for (let attempt = 1; ; attempt++) {
				const byEmail = await this.findUserByLogin("email", email);
				if (byEmail) {
					// Created by the bootstrap, or an admin already (the bootstrap admin of an older version).
					if (byEmail.origin === "bootstrap") return;
					if (((await this.rolesOf([byEmail.id])).get(byEmail.id) ?? []).includes("admin")) return;
					throw this.bootstrapRefusal(
						`ADMIN_EMAIL ${email} is the email of account #${byEmail.id} ("${byEmail.username}"), which was registered through the API, not created by this bootstrap; it is not made an admin. Set ADMIN_EMAIL to an address no account uses, or, if that account is yours, give it the admin role from an admin account and start again`,
					);
				}
				const byName = await this.findUserByLogin("username", username);
				if (byName) {
					if (byName.origin !== "bootstrap") {
						throw this.bootstrapRefusal(`ADMIN_USERNAME "${username}" is taken by account #${byName.id}, which was registered through the API; set ADMIN_USERNAME to a name no account uses`);
					}
					this.logger.warn(`Admin bootstrap: the bootstrap admin "${username}" has another email (not ${email}); nothing was created`);
					return;
				}
				try {
					await this.createUser({ username, email, password, roles: ["admin", "user"], origin: "bootstrap" });
					this.logger.info(`Admin account ${email} created`);
					return;
				} catch (err) {
					// Another users node created it at this moment (or someone registered one of the names): look again.
					if ((err as { type?: string }).type !== "CONFLICT") throw err;
					if (attempt >= 3) throw this.bootstrapRefusal(`could not create ADMIN_EMAIL ${email}: ${(err as Error).message}`);
				}
			}
		},

		bootstrapRefusal(this: UsersThis, message: string) {
			this.logger.fatal(`Admin bootstrap refused, the users service does not start: ${message}`);
			return new Error(`Admin bootstrap refused: ${message}`);
		},
	},

	created(this: UsersThis) {
		this.presence = new ClusterPresence();
		this.presenceSync = new Map();
		this.presenceQueue = new Set();
		this.presenceTimer = null;
		this.presencePruneTimer = null;
		this.presenceLeaderID = null;
		this.presenceConnectedOnce = false;
		// In the registry: every users node can tell the oldest one, which fans presence out.
		this.metadata.presenceSince = Date.now();
		this.lastRevocationPrune = 0;
		this.passwords = new PasswordHasher(undefined, PASSWORD_CHECKS_WAITING);
		this.dummy = null;
		this.profileEpoch = 0;
		this.lastCacheWarning = 0;
	},

	// After the sql mixin's started (which connected and migrated). Not in afterConnected: moleculer-db
	// retries a failing connect() every second forever, so a refusal thrown there would never end the start.
	async started(this: UsersThis) {
		try {
			await this.bootstrapAdmin();
		} catch (err) {
			await this.disconnect();
			throw err;
		}
		this.presenceConnectedOnce = !this.broker.transit || this.broker.transit.connected;
		// The gateways already there: their full state, once (later ones as they come, $services.changed).
		this.presenceSyncAll();
		this.presencePruneTimer = setInterval(() => this.presence.pruneOfflineTimes(Date.now() - OFFLINE_MEMORY_MS), 60_000);
		this.presencePruneTimer.unref();
	},

	async stopped(this: UsersThis) {
		if (this.presencePruneTimer) clearInterval(this.presencePruneTimer);
		if (this.presenceTimer) clearTimeout(this.presenceTimer);
		this.presenceTimer = null;
		await this.passwords.close();
	},
};

export default UsersService;
