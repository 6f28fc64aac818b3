/**
 * users: accounts, roles and tokens (PostgreSQL, or the embedded PGlite).
 * Owns the tables users, roles, user_role, tokens; nothing else reads them.
 */
import crypto from "node:crypto";
import bcrypt from "bcryptjs";
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { DataTypes, Op, QueryTypes, UniqueConstraintError, type Model, type ModelStatic, type Sequelize, type Transaction } from "sequelize";
import { config } from "../lib/config";
import { EVENTS, PRESENCE_INTERVAL_MS, ROLES, isAdmin, primaryRole } from "../lib/constants";
import { conflict, forbidden, invalidCredentials, notFound, rateLimited, unauthorized, validationError } from "../lib/errors";
import { callerOf } from "../lib/caller";
import type { CallMeta } from "../lib/meta";
import { usersMigrations } from "../lib/migrations/users";
import { type AuthUser, hashRefreshToken, newRefreshToken, signAccessToken } from "../lib/tokens";
import { createSqlMixin, type SqlMixinThis } from "../mixins/sql.mixin";

/** Failed logins for one account before each further attempt must wait (doubling, capped). */
const FREE_FAILED_LOGINS = 5;
const MAX_LOGIN_BLOCK_SECONDS = 15 * 60;

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
	created_at: Date;
	updated_at: Date;
}

export interface PublicUser {
	user_id: number;
	id: number;
	username: string;
	email?: string;
	avatar_url: string | null;
	bio: string | null;
	status: string;
	role: string;
	roles: string[];
	created_at: string;
	updated_at: string;
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
			created_at: { type: DataTypes.DATE, defaultValue: DataTypes.NOW },
			updated_at: { type: DataTypes.DATE, defaultValue: DataTypes.NOW },
		},
		common,
	);
	return { main: User as ModelStatic<Model>, User };
}
type UserModels = ReturnType<typeof defineModels>;

type UsersThis = SqlMixinThis<UserModels> & Service & UsersMethods & {
	/** Per gateway node: who has a /chat socket there, and when the node last said so. */
	presence: Map<string, { userIds: Set<number>; at: number }>;
};
type Ctx<P = Record<string, never>> = Context<P, CallMeta>;

interface UsersMethods {
	isOnline(userId: number): boolean;
	findUser(id: number, tx?: Transaction): Promise<UserRow | null>;
	findUserByLogin(field: "email" | "username", value: string): Promise<UserRow | null>;
	rolesOf(ids: number[], tx?: Transaction): Promise<Map<number, string[]>>;
	present(rows: UserRow[], viewer: AuthUser | null | undefined): Promise<PublicUser[]>;
	presentOne(row: UserRow, viewer: AuthUser | null | undefined): Promise<PublicUser>;
	issueTokens(ctx: Ctx<unknown>, user: UserRow, familyId?: string, tx?: Transaction): Promise<{ accessToken: string; refreshToken: string }>;
	revokeFamily(familyId: string, tx?: Transaction): Promise<void>;
	createUser(input: { username: string; email: string; password: string; roles: string[] }): Promise<UserRow>;
	setRoles(userId: number, roles: string[], tx: Transaction): Promise<void>;
	callerIsAdmin(ctx: Ctx<unknown>): Promise<boolean>;
	requireSelfOrAdmin(ctx: Ctx<unknown>, targetId: number): Promise<void>;
	adminCount(tx: Transaction): Promise<number>;
	checkPasswordBytes(field: string, password: string): void;
	uniqueViolation(err: unknown): never;
	bootstrapAdmin(): Promise<void>;
}

const idParam = { type: "number", integer: true, positive: true, convert: true } as const;
const usernameRule = { type: "string", trim: true, min: 3, max: 32, pattern: /^[A-Za-z0-9_.-]+$/, patternFlags: "", messages: { stringPattern: "Username may contain letters, digits, '_', '.' and '-' only" } };
const emailRule = { type: "email", normalize: true, max: 254 } as const;
const passwordRule = { type: "string", min: 8, max: 72 } as const;
const limitRule = (def: number) => ({ type: "number", integer: true, min: 1, max: 100, convert: true, optional: true, default: def }) as const;

/** LIKE pattern for a literal prefix: the user's %, _ and \ match themselves. */
const likePrefix = (s: string) => s.toLowerCase().replace(/[\\%_]/g, c => "\\" + c) + "%";

// A real bcrypt hash to compare against when the account does not exist, so the answer
// takes as long as for a wrong password (no account enumeration by timing).
const DUMMY_HASH = bcrypt.hashSync(crypto.randomBytes(16).toString("hex"), 10);

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
			auth: false,
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
				return { user: await this.presentOne(user, viewer), ...tokens };
			},
		},

		login: {
			auth: false,
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
					await bcrypt.compare(password, DUMMY_HASH);
					throw invalidCredentials();
				}
				const now = Date.now();
				if (user.login_blocked_until && user.login_blocked_until.getTime() > now) {
					throw rateLimited((user.login_blocked_until.getTime() - now) / 1000);
				}
				if (!(await bcrypt.compare(password, user.password_hash))) {
					const failures = user.failed_logins + 1;
					const blockSeconds = failures >= FREE_FAILED_LOGINS ? Math.min(MAX_LOGIN_BLOCK_SECONDS, 2 ** (failures - FREE_FAILED_LOGINS)) : 0;
					await this.models.User.update(
						{ failed_logins: failures, login_blocked_until: blockSeconds ? new Date(now + blockSeconds * 1000) : null },
						{ where: { id: user.id } },
					);
					throw invalidCredentials();
				}
				if (user.failed_logins > 0) {
					await this.models.User.update({ failed_logins: 0, login_blocked_until: null }, { where: { id: user.id } });
				}
				const presented = await this.presentOne(user, { id: user.id, username: user.username, roles: [] });
				const tokens = await this.issueTokens(ctx, user);
				return { user: presented, ...tokens };
			},
		},

		refresh: {
			auth: false,
			params: {
				$$strict: "remove",
				refreshToken: { type: "string", optional: true, min: 1, max: 200 },
			},
			async handler(this: UsersThis, ctx: Ctx<{ refreshToken?: string }>) {
				const presented = ctx.params.refreshToken || ctx.meta.refreshCookie;
				if (!presented) throw unauthorized("Refresh token required");
				const hash = hashRefreshToken(presented);
				const result = await this.sequelize.transaction(async tx => {
					const [row] = await this.sequelize.query<{ id: string; user_id: number; family_id: string; expires_at: Date; used_at: Date | null; revoked_at: Date | null }>(
						"SELECT id, user_id, family_id, expires_at, used_at, revoked_at FROM tokens WHERE token_hash = :hash FOR UPDATE",
						{ replacements: { hash }, type: QueryTypes.SELECT, transaction: tx },
					);
					if (!row) return { error: "unknown" as const };
					if (row.used_at || row.revoked_at) {
						// A spent token came back: someone holds a copy. End the whole login.
						await this.revokeFamily(row.family_id, tx);
						return { error: "reused" as const };
					}
					if (row.expires_at.getTime() <= Date.now()) return { error: "expired" as const };
					await this.sequelize.query("UPDATE tokens SET used_at = now() WHERE id = :id", { replacements: { id: row.id }, transaction: tx });
					const user = await this.findUser(row.user_id, tx);
					if (!user) return { error: "unknown" as const };
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
			auth: false,
			params: {
				$$strict: "remove",
				refreshToken: { type: "string", optional: true, min: 1, max: 200 },
			},
			async handler(this: UsersThis, ctx: Ctx<{ refreshToken?: string }>) {
				const presented = ctx.params.refreshToken || ctx.meta.refreshCookie;
				if (presented) {
					const [row] = await this.sequelize.query<{ family_id: string }>("SELECT family_id FROM tokens WHERE token_hash = :hash", {
						replacements: { hash: hashRefreshToken(presented) },
						type: QueryTypes.SELECT,
					});
					if (row) await this.revokeFamily(row.family_id);
				}
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		me: {
			async handler(this: UsersThis, ctx: Ctx) {
				const caller = callerOf(ctx);
				const user = await this.findUser(caller.id);
				if (!user) throw unauthorized("This account no longer exists");
				return this.presentOne(user, caller);
			},
		},

		list: {
			params: {
				$$strict: "remove",
				search: { type: "string", optional: true, trim: true, max: 100 },
				page: { type: "number", integer: true, min: 1, max: 100000, convert: true, optional: true, default: 1 },
				limit: limitRule(50),
			},
			async handler(this: UsersThis, ctx: Ctx<{ search?: string; page: number; limit: number }>) {
				const caller = callerOf(ctx);
				const { search, page, limit } = ctx.params;
				const where = search
					? {
							[Op.or]: [
								this.sequelize.where(this.sequelize.fn("lower", this.sequelize.col("username")), { [Op.like]: "%" + likePrefix(search) }),
								this.sequelize.where(this.sequelize.fn("lower", this.sequelize.col("email")), { [Op.like]: likePrefix(search) }),
							],
						}
					: {};
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
					data: await this.present(rows as unknown as UserRow[], caller),
					total: count,
					page,
					limit,
					totalPages: Math.ceil(count / limit),
				};
			},
		},

		search: {
			params: {
				$$strict: "remove",
				q: { type: "string", trim: true, min: 1, max: 100 },
				limit: limitRule(20),
			},
			async handler(this: UsersThis, ctx: Ctx<{ q: string; limit: number }>) {
				const caller = callerOf(ctx);
				const pattern = likePrefix(ctx.params.q);
				const rows = await this.sequelize.query<UserRow>(
					`SELECT * FROM users
					 WHERE lower(username) LIKE :pattern OR lower(email) LIKE :pattern
					 ORDER BY (lower(username) = :exact) DESC, length(username), lower(username), id
					 LIMIT :limit`,
					{ replacements: { pattern, exact: ctx.params.q.toLowerCase(), limit: ctx.params.limit }, type: QueryTypes.SELECT },
				);
				return this.present(rows, caller);
			},
		},

		get: {
			params: { $$strict: "remove", id: idParam },
			async handler(this: UsersThis, ctx: Ctx<{ id: number }>) {
				const caller = callerOf(ctx);
				const user = await this.findUser(ctx.params.id);
				if (!user) throw notFound("User");
				return this.presentOne(user, caller);
			},
		},

		batch: {
			params: {
				$$strict: "remove",
				ids: { type: "array", max: 100, items: { type: "number", integer: true, positive: true, convert: true } },
			},
			async handler(this: UsersThis, ctx: Ctx<{ ids: number[] }>) {
				const caller = callerOf(ctx);
				const ids = [...new Set(ctx.params.ids)];
				if (ids.length === 0) return [];
				const rows = (await this.models.User.findAll({ where: { id: ids }, raw: true })) as unknown as UserRow[];
				const byId = new Map(rows.map(r => [r.id, r]));
				// In the order asked for; unknown ids are left out.
				return this.present(ids.map(id => byId.get(id)).filter((r): r is UserRow => !!r), caller);
			},
		},

		update: {
			params: {
				$$strict: "remove",
				id: idParam,
				username: { ...usernameRule, optional: true },
				email: { ...emailRule, optional: true },
				avatar_url: { type: "string", optional: true, nullable: true, max: 2048, trim: true },
				bio: { type: "string", optional: true, nullable: true, max: 500 },
			},
			async handler(this: UsersThis, ctx: Ctx<{ id: number; username?: string; email?: string; avatar_url?: string | null; bio?: string | null }>) {
				const { id, ...changes } = ctx.params;
				await this.requireSelfOrAdmin(ctx, id);
				if (changes.avatar_url && !/^(https?:\/\/|\/)/i.test(changes.avatar_url)) {
					throw validationError("avatar_url must be an http(s) URL or a path on this server", [{ field: "avatar_url", type: "url", message: "Must be an http(s) URL or a path" }]);
				}
				const user = await this.findUser(id);
				if (!user) throw notFound("User");
				const patch: Partial<UserRow> = {};
				if (changes.username !== undefined) patch.username = changes.username;
				if (changes.email !== undefined) patch.email = changes.email.toLowerCase();
				if (changes.avatar_url !== undefined) patch.avatar_url = changes.avatar_url || null;
				if (changes.bio !== undefined) patch.bio = changes.bio;
				if (Object.keys(patch).length > 0) {
					try {
						await this.models.User.update({ ...patch, updated_at: new Date() }, { where: { id } });
					} catch (err) {
						this.uniqueViolation(err);
					}
				}
				const updated = (await this.findUser(id)) as UserRow;
				const presented = await this.presentOne(updated, callerOf(ctx));
				ctx.broadcast(EVENTS.userUpdated, { userId: id });
				return presented;
			},
		},

		remove: {
			params: { $$strict: "remove", id: idParam },
			async handler(this: UsersThis, ctx: Ctx<{ id: number }>) {
				const { id } = ctx.params;
				await this.requireSelfOrAdmin(ctx, id);
				await this.sequelize.transaction(async tx => {
					const user = await this.findUser(id, tx);
					if (!user) throw notFound("User");
					const roles = (await this.rolesOf([id], tx)).get(id) ?? [];
					if (roles.includes("admin") && (await this.adminCount(tx)) <= 1) {
						throw conflict("The last admin cannot be deleted");
					}
					// user_role and tokens go with it (ON DELETE CASCADE).
					await this.models.User.destroy({ where: { id }, transaction: tx });
				});
				ctx.broadcast(EVENTS.userDeleted, { userId: id });
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		changePassword: {
			params: {
				$$strict: "remove",
				oldPassword: { type: "string", min: 1, max: 200 },
				newPassword: passwordRule,
			},
			async handler(this: UsersThis, ctx: Ctx<{ oldPassword: string; newPassword: string }>) {
				const caller = callerOf(ctx);
				this.checkPasswordBytes("newPassword", ctx.params.newPassword);
				const user = await this.findUser(caller.id);
				if (!user) throw unauthorized("This account no longer exists");
				if (!(await bcrypt.compare(ctx.params.oldPassword, user.password_hash))) throw invalidCredentials();
				const hash = await bcrypt.hash(ctx.params.newPassword, config.bcryptRounds);
				await this.sequelize.transaction(async tx => {
					await this.models.User.update({ password_hash: hash, updated_at: new Date() }, { where: { id: user.id }, transaction: tx });
					// Every login of this account ends: a stolen refresh token dies with the old password.
					await this.sequelize.query("UPDATE tokens SET revoked_at = now() WHERE user_id = :id AND revoked_at IS NULL", {
						replacements: { id: user.id },
						transaction: tx,
					});
				});
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		uploadAvatar: {
			params: {
				$$strict: "remove",
				fileName: { type: "string", min: 1, max: 500 },
				mimeType: { type: "string", optional: true, max: 200 },
				base64: { type: "string", min: 1 },
			},
			async handler(this: UsersThis, ctx: Ctx<{ fileName: string; mimeType?: string; base64: string }>) {
				const caller = callerOf(ctx);
				// The files service checks it is an image from its bytes, and stores it.
				const file = (await ctx.call("files.saveBase64", { ...ctx.params, onlyImages: true })) as { url: string; fileId: string };
				ctx.meta.$statusCode = 200;
				await this.models.User.update({ avatar_url: file.url, updated_at: new Date() }, { where: { id: caller.id } });
				const user = await this.findUser(caller.id);
				if (!user) throw unauthorized("This account no longer exists");
				ctx.broadcast(EVENTS.userUpdated, { userId: caller.id });
				return { url: file.url, user: await this.presentOne(user, caller) };
			},
		},

		roles: {
			async handler(this: UsersThis, ctx: Ctx) {
				callerOf(ctx);
				return this.sequelize.query<{ id: number; name: string }>("SELECT id, name FROM roles ORDER BY id", { type: QueryTypes.SELECT });
			},
		},

		setRoles: {
			roles: ["admin"],
			params: {
				$$strict: "remove",
				id: idParam,
				roles: { type: "array", min: 1, max: ROLES.length, unique: true, items: { type: "enum", values: [...ROLES] } },
			},
			async handler(this: UsersThis, ctx: Ctx<{ id: number; roles: string[] }>) {
				if (!(await this.callerIsAdmin(ctx))) throw forbidden("Only an admin may change roles");
				const { id, roles } = ctx.params;
				await this.sequelize.transaction(async tx => {
					const user = await this.findUser(id, tx);
					if (!user) throw notFound("User");
					const current = (await this.rolesOf([id], tx)).get(id) ?? [];
					if (current.includes("admin") && !roles.includes("admin") && (await this.adminCount(tx)) <= 1) {
						throw conflict("The last admin cannot lose the admin role");
					}
					await this.setRoles(id, roles, tx);
				});
				const user = (await this.findUser(id)) as UserRow;
				return this.presentOne(user, callerOf(ctx));
			},
		},

		/** For other services: user ids in order, a page at a time (admin broadcasts). */
		ids: {
			visibility: "public",
			params: { afterId: { type: "number", integer: true, min: 0, default: 0 }, limit: { type: "number", integer: true, min: 1, max: 1000, default: 500 } },
			async handler(this: UsersThis, ctx: Ctx<{ afterId: number; limit: number }>) {
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
			async handler(this: UsersThis) {
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
			async handler(this: UsersThis, ctx: Ctx<{ ids: number[] }>) {
				const rows = (await this.models.User.findAll({ where: { id: [...new Set(ctx.params.ids)] }, raw: true })) as unknown as UserRow[];
				return this.present(rows, null);
			},
		},
	},

	events: {
		[EVENTS.presenceSnapshot](this: UsersThis, ctx: Context<{ nodeID: string; userIds: number[] }>) {
			this.presence.set(ctx.params.nodeID, { userIds: new Set(ctx.params.userIds), at: Date.now() });
		},
		/** A gateway that died without a word: its users are not online through it any more. */
		"$node.disconnected"(this: UsersThis, ctx: Context<{ node: { id: string } }>) {
			this.presence.delete(ctx.params.node.id);
		},
	},

	methods: {
		isOnline(this: UsersThis, userId: number) {
			// A node silent for three snapshot intervals is presumed gone.
			const fresh = Date.now() - 3 * PRESENCE_INTERVAL_MS;
			for (const [node, entry] of this.presence) {
				if (entry.at < fresh) this.presence.delete(node);
				else if (entry.userIds.has(userId)) return true;
			}
			return false;
		},

		async findUser(this: UsersThis, id: number, tx?: Transaction) {
			return (await this.models.User.findByPk(id, { raw: true, transaction: tx })) as unknown as UserRow | null;
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

		async present(this: UsersThis, rows: UserRow[], viewer: AuthUser | null | undefined) {
			const roles = await this.rolesOf(rows.map(r => r.id));
			const viewerIsAdmin = isAdmin(viewer);
			return rows.map(row => {
				const userRoles = roles.get(row.id) ?? [];
				const out: PublicUser = {
					user_id: row.id,
					id: row.id,
					username: row.username,
					avatar_url: row.avatar_url,
					bio: row.bio,
					status: this.isOnline(row.id) ? "online" : "offline",
					role: primaryRole(userRoles),
					roles: userRoles,
					created_at: new Date(row.created_at).toISOString(),
					updated_at: new Date(row.updated_at).toISOString(),
				};
				// The email is private: the user itself and admins see it.
				if (viewer && (viewer.id === row.id || viewerIsAdmin)) return { ...out, email: row.email };
				return out;
			});
		},

		async presentOne(this: UsersThis, row: UserRow, viewer: AuthUser | null | undefined) {
			const [out] = await this.present([row], viewer);
			return out;
		},

		async issueTokens(this: UsersThis, ctx: Ctx<unknown>, user: UserRow, familyId?: string, tx?: Transaction) {
			const roles = (await this.rolesOf([user.id], tx)).get(user.id) ?? [];
			const refreshToken = newRefreshToken();
			await this.sequelize.query(
				`INSERT INTO tokens (user_id, token_hash, family_id, expires_at, user_agent, ip)
				 VALUES (:userId, :hash, :family, :expires, :ua, :ip)`,
				{
					replacements: {
						userId: user.id,
						hash: hashRefreshToken(refreshToken),
						family: familyId ?? crypto.randomUUID(),
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
			return { accessToken: signAccessToken({ id: user.id, username: user.username, roles }), refreshToken };
		},

		async revokeFamily(this: UsersThis, familyId: string, tx?: Transaction) {
			await this.sequelize.query("UPDATE tokens SET revoked_at = now() WHERE family_id = :familyId AND revoked_at IS NULL", {
				replacements: { familyId },
				transaction: tx,
			});
		},

		async createUser(this: UsersThis, input) {
			const hash = await bcrypt.hash(input.password, config.bcryptRounds);
			try {
				return await this.sequelize.transaction(async tx => {
					const created = await this.models.User.create(
						{ username: input.username, email: input.email.toLowerCase(), password_hash: hash, status: "offline" } as UserRow,
						{ transaction: tx },
					);
					const row = created.get({ plain: true }) as UserRow;
					await this.setRoles(row.id, input.roles, tx);
					return (await this.findUser(row.id, tx)) as UserRow;
				});
			} catch (err) {
				this.uniqueViolation(err);
			}
		},

		async setRoles(this: UsersThis, userId: number, roles: string[], tx: Transaction) {
			await this.sequelize.query("DELETE FROM user_role WHERE user_id = :userId", { replacements: { userId }, transaction: tx });
			await this.sequelize.query("INSERT INTO user_role (user_id, role_id) SELECT :userId, id FROM roles WHERE name IN (:roles)", {
				replacements: { userId, roles },
				transaction: tx,
			});
		},

		/** Roles are read from the database, not trusted from the token, for admin-only acts. */
		async callerIsAdmin(this: UsersThis, ctx: Ctx<unknown>) {
			const caller = callerOf(ctx);
			const roles = (await this.rolesOf([caller.id])).get(caller.id) ?? [];
			return roles.includes("admin");
		},

		async requireSelfOrAdmin(this: UsersThis, ctx: Ctx<unknown>, targetId: number) {
			const caller = callerOf(ctx);
			if (caller.id === targetId) return;
			if (!(await this.callerIsAdmin(ctx))) throw forbidden("Only the user itself or an admin may do this");
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

		/** ADMIN_EMAIL / ADMIN_PASSWORD: make sure that account exists and is an admin. */
		async bootstrapAdmin(this: UsersThis) {
			const email = config.adminEmail;
			const password = config.adminPassword;
			if (!email || !password) return;
			const existing = await this.findUserByLogin("email", email);
			if (existing) {
				await this.sequelize.transaction(async tx => {
					const roles = (await this.rolesOf([existing.id], tx)).get(existing.id) ?? [];
					if (!roles.includes("admin")) await this.setRoles(existing.id, [...new Set([...roles, "admin", "user"])], tx);
				});
				return;
			}
			try {
				await this.createUser({ username: config.adminUsername, email, password, roles: ["admin", "user"] });
				this.logger.info(`Admin account ${email} created`);
			} catch (err) {
				// Another users node created it at the same moment: fine. Anything else is logged.
				if ((err as { type?: string }).type !== "CONFLICT") throw err;
				this.logger.warn(`Admin bootstrap: ${(err as Error).message}`);
			}
		},
	},

	created(this: UsersThis) {
		this.presence = new Map();
	},

	async afterConnected(this: UsersThis) {
		await this.bootstrapAdmin();
	},
};

export default UsersService;
