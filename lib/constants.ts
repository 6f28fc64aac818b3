/** Names shared by several services: roles, and the broker events one service emits for others. */
export const ROLES = ["admin", "moderator", "user"] as const;
export type RoleName = (typeof ROLES)[number];

/** The most privileged role first: a user's `role` is the first of these it holds. */
export function primaryRole(roles: readonly string[]): RoleName {
	return ROLES.find(r => roles.includes(r)) ?? "user";
}

export const isAdmin = (user: { roles?: readonly string[] } | null | undefined) => Array.isArray(user?.roles) && user.roles.includes("admin");

export const EVENTS = {
	userDeleted: "users.user.deleted",
	userUpdated: "users.user.updated",
	/** A login, or every login of an account, ended (SessionRevocation); every gateway node ends its sockets. */
	sessionsRevoked: "users.sessions.revoked",
	/** A gateway's changes of local presence and subscriptions, to every users node (lib/presence.ts PresenceDelta). */
	presenceDelta: "presence.delta",
	/** Presence changes for the sockets of one gateway node, from the users node that fans out (lib/presence.ts PresencePush). */
	presencePush: "presence.push",
} as const;
