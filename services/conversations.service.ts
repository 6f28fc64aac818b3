/**
 * conversations: private chats and message requests, groups and their roles, each member's
 * settings and read position, blocks, typing. Owns the collections conversations, memberships
 * and blocks; messages are the messages service's, reached through its actions.
 */
import crypto from "node:crypto";
import type { Context, ServiceSchema, ServiceSettingSchema } from "moleculer";
import {
	type ConversationDoc,
	type ConversationMeta,
	MAX_GROUP_SIZE,
	type MembershipDoc,
	decodeCursor,
	encodeCursor,
	fileIdOfPath,
	fileIdsRule,
	FILE_PATH_PATTERN,
	filePath,
	idRule,
	isMuted,
	limitRule,
	membershipKey,
	notificationTargetsOf,
	presentConversation,
	sendingSkips,
	userIdRule,
} from "../lib/chat";
import { callAction, type ActionResult } from "../lib/contracts";
import { CHANNELS } from "../lib/durable-events";
import { appError, badRequest, conflict, forbidden, notFound, unauthorized, validationError } from "../lib/errors";
import { callerOf } from "../lib/caller";
import { ReadCache, forgetOnOtherNodes } from "../lib/read-cache";
import { SerialWork } from "../lib/serial-work";
import type { CallMeta } from "../lib/meta";
import type { AuthUser } from "../lib/tokens";
import { createDocsMixin, type DocsMixinThis, isDuplicateKeyError } from "../mixins/docs.mixin";
import { PublisherMixin, type PublisherThis } from "../mixins/publisher.mixin";
import { PushMixin, type PushItem, type PushThis, conversationRoom, userRoom } from "../mixins/push.mixin";

type Collections = "conversations" | "memberships" | "blocks";
type Ctx<P = Record<string, never>> = Context<P, CallMeta & { socketId?: string }>;

/** Every conversations node drops these (conversation, user) pairs from its typing caches. */
const MEMBERSHIP_REMOVED = "conversations.membership.removed";
/** How long a change waits for another conversations node to forget its cached metadata. */
const FORGET_TIMEOUT_MS = 2_000;
const MAX_TYPING_CACHE = 20_000;
/** A safety net only: every change forgets the entry at once. */
const META_TTL_SECONDS = 600;

interface ConvThis extends DocsMixinThis<Collections>, PushThis, PublisherThis {
	announceInvite(conv: ConversationDoc, userIds: number[], inviter: AuthUser): void;
	setMySettings(ctx: Ctx<unknown>, conversationId: string, set: Partial<MembershipDoc>): Promise<null>;
	changeModerator(ctx: Ctx<unknown>, conv: ConversationDoc, target: number, promoted: boolean, actorId: number): Promise<ReturnType<typeof presentConversation>>;
	typingState: Map<string, { at: number; isTyping: boolean }>;
	metaCache: ReadCache<ConversationMeta>;
	metaOf(conversationId: string): Promise<ConversationMeta | null>;
	loadMeta(conversationId: string): Promise<ConversationMeta | null>;
	forgetMeta(ctx: Ctx<unknown> | null, ids: string[] | "all"): Promise<void>;
	audienceFromMeta(meta: ConversationMeta, userId: number, either: boolean): number[];
	loadForMember(conversationId: string, userId: number): Promise<{ conv: ConversationDoc; membership: MembershipDoc }>;
	membershipsOf(conversationId: string): Promise<MembershipDoc[]>;
	addMembership(conversationId: string, userId: number, lastSeq: number): Promise<void>;
	presentFor(conv: ConversationDoc, userId: number): Promise<ReturnType<typeof presentConversation>>;
	pushConversation(ctx: Ctx<unknown>, conv: ConversationDoc, event: string, to: number[], extra?: Record<string, unknown>): Promise<void>;
	pushToParticipants(ctx: Ctx<unknown>, participants: number[], event: string, payload: unknown, aliases?: string[]): Promise<void>;
	systemMessage(ctx: Ctx<unknown>, conversationId: string, event: string, userId: number | null, actorId: number): Promise<void>;
	blockedBetween(a: number, others: number[]): Promise<Set<number>>;
	blockersOf(userId: number, among: number[]): Promise<Set<number>>;
	liveMembers(conv: ConversationDoc): Promise<number[]>;
	audienceOf(conv: ConversationDoc, userId: number, either: boolean): Promise<number[]>;
	requireUsersExist(ctx: Ctx<unknown>, ids: number[], callerId?: number): Promise<void>;
	checkAvatar(ctx: Ctx<unknown>, given: string | null | undefined, current: string | null): Promise<string | null | undefined>;
	releaseFiles(ctx: Ctx<unknown>, refs: (string | null)[]): void;
	forgetMembers(ctx: Ctx<unknown>, keys: string[]): Promise<void>;
	pruneTypingCaches(): void;
	writeConversation<T>(conversationId: string, write: () => Promise<T>): Promise<T>;
	convWrites: SerialWork;
	requireGroupManager(conv: ConversationDoc, userId: number): void;
	reload(conversationId: string): Promise<ConversationDoc>;
	removeFromGroup(ctx: Ctx<unknown>, conv: ConversationDoc, userId: number, actorId: number): Promise<ConversationDoc | null>;
	deleteConversation(ctx: Ctx<unknown>, conv: ConversationDoc): Promise<void>;
	listFor(userId: number, limit: number, before: string | undefined, filter: Record<string, unknown>): Promise<{ items: ConversationDoc[]; next: string | null }>;
}

const ConversationsService: ServiceSchema<ServiceSettingSchema, ConvThis> = {
	name: "conversations",
	mixins: [
		createDocsMixin<Collections>({
			collections: {
				conversations: {
					definition: {
						type: String,
						participants: [Number],
						name: { type: String, default: null },
						avatar: { type: String, default: null },
						admin_id: { type: Number, default: null },
						moderator_ids: [Number],
						initiator_id: { type: Number, default: null },
						status: String,
						pair_key: String,
						last_seq: Number,
						last_message: { type: Object, default: null },
						last_activity_at: Date,
						sent_seq: { type: Object, default: {} },
						nicknames: { type: Object, default: {} },
						created_at: Date,
						updated_at: Date,
					},
					// avatar: the files service asks which files are still some group's picture (fileRefs).
					// Not in NeDB: nearly every conversation shares its null, which would make each head
					// update scan them all (docs.mixin IndexSpec.nedb); fileRefs is rare and scans instead.
					indexes: [{ fields: { pair_key: 1 }, unique: true }, { fields: { participants: 1, last_activity_at: -1 } }, { fields: { participants: 1 } }, { fields: { avatar: 1 }, nedb: false }],
				},
				memberships: {
					definition: {
						key: String,
						conversation_id: String,
						user_id: Number,
						joined_at: Date,
						last_read_seq: Number,
						cleared_seq: Number,
						muted: Boolean,
						mute_until: { type: Date, default: null },
						pinned: Boolean,
						hidden: Boolean,
					},
					indexes: [{ fields: { key: 1 }, unique: true }, { fields: { user_id: 1 } }, { fields: { conversation_id: 1 } }],
				},
				blocks: {
					definition: { key: String, blocker_id: Number, blocked_id: Number, created_at: Date },
					indexes: [{ fields: { key: 1 }, unique: true }, { fields: { blocker_id: 1 } }, { fields: { blocked_id: 1 } }],
				},
			},
		}),
		PushMixin,
		PublisherMixin,
	],

	actions: {
		create: {
			params: {
				$$strict: "remove",
				type: { type: "enum", values: ["private", "group"], optional: true },
				isGroup: { type: "boolean", optional: true, convert: true },
				participants: { type: "array", optional: true, max: MAX_GROUP_SIZE, items: userIdRule },
				participantIds: { type: "array", optional: true, max: MAX_GROUP_SIZE, items: userIdRule },
				name: { type: "string", optional: true, nullable: true, trim: true, max: 100 },
				avatar: { type: "string", optional: true, nullable: true, trim: true, max: 2048 },
			},
			async handler(this: ConvThis, ctx: Ctx<{ type?: string; isGroup?: boolean; participants?: number[]; participantIds?: number[]; name?: string | null; avatar?: string | null }>) {
				const me = callerOf(ctx);
				const p = ctx.params;
				const given = p.participants ?? p.participantIds;
				if (!given) throw validationError("participants is required", [{ field: "participants", type: "required", message: "Give the other participants" }]);
				const others = [...new Set(given)].filter(id => id !== me.id);
				const type = p.type ?? (p.isGroup === true ? "group" : p.isGroup === false ? "private" : others.length > 1 ? "group" : "private");
				if (others.length === 0) throw validationError("A conversation needs someone else", [{ field: "participants", type: "arrayMin", message: "Give at least one other user" }]);
				if (type === "private" && others.length !== 1) {
					throw validationError("A private conversation has exactly one other participant", [{ field: "participants", type: "arrayLength", message: "Exactly one other user" }]);
				}
				if (others.length + 1 > MAX_GROUP_SIZE) throw validationError("Too many participants", [{ field: "participants", type: "arrayMax", message: `At most ${MAX_GROUP_SIZE}` }]);
				// The caller too: a deleted account's token, still valid for a while, starts nothing.
				await this.requireUsersExist(ctx, others, me.id);
				const now = new Date();

				if (type === "private") {
					const other = others[0];
					if ((await this.blockedBetween(me.id, [other])).size > 0) throw forbidden("You cannot start a conversation with this user");
					const pairKey = `p:${Math.min(me.id, other)}:${Math.max(me.id, other)}`;
					const existing = (await this.stores.conversations.findOne({ pair_key: pairKey })) as ConversationDoc | null;
					if (existing) {
						// A private chat between two users exists once: creating it again returns it.
						await this.stores.memberships.updateMany({ key: membershipKey(existing._id, me.id) }, { $set: { hidden: false } });
						await this.forgetMeta(ctx, [existing._id]);
						return this.presentFor(existing, me.id);
					}
					let conv: ConversationDoc;
					try {
						conv = (await this.stores.conversations.insert({
							type: "private",
							participants: [me.id, other],
							name: null,
							avatar: null,
							admin_id: null,
							moderator_ids: [],
							initiator_id: me.id,
							status: "pending",
							pair_key: pairKey,
							last_seq: 0,
							last_message: null,
							last_activity_at: now,
							nicknames: {},
							created_at: now,
							updated_at: now,
						})) as ConversationDoc;
					} catch (err) {
						if (!isDuplicateKeyError(err)) throw err;
						// The other side created it at the same moment.
						const raced = (await this.stores.conversations.findOne({ pair_key: pairKey })) as ConversationDoc;
						return this.presentFor(raced, me.id);
					}
					await Promise.all(conv.participants.map(uid => this.addMembership(conv._id, uid, 0)));
					ctx.meta.$statusCode = 201;
					await this.pushConversation(ctx, conv, "conversation:created", conv.participants);
					return this.presentFor(conv, me.id);
				}

				const participants = [me.id, ...others];
				// As for adding a member: nobody is put in a group with someone blocked either way.
				// Everything is checked before the first write, so a refusal leaves nothing behind.
				const blocked = await this.blockedBetween(me.id, others);
				if (blocked.size > 0) {
					throw appError("FORBIDDEN", "You cannot start a group with a user you blocked or who blocked you", [...blocked].map(id => ({ field: "participants", type: "blocked", message: `User ${id}` })));
				}
				const avatar = await this.checkAvatar(ctx, p.avatar, null);
				const conv = (await this.stores.conversations.insert({
					type: "group",
					participants,
					name: p.name || null,
					avatar: avatar ?? null,
					admin_id: me.id,
					moderator_ids: [],
					initiator_id: me.id,
					status: "accepted",
					pair_key: `g:${crypto.randomUUID()}`,
					last_seq: 0,
					last_message: null,
					last_activity_at: now,
					nicknames: {},
					created_at: now,
					updated_at: now,
				})) as ConversationDoc;
				await Promise.all(participants.map(uid => this.addMembership(conv._id, uid, 0)));
				// Clients learn of the conversation before its first (system) message.
				await this.pushConversation(ctx, conv, "conversation:created", conv.participants);
				await this.systemMessage(ctx, conv._id, "group_created", null, me.id);
				this.announceInvite(conv, others, me);
				ctx.meta.$statusCode = 201;
				return this.presentFor(await this.reload(conv._id), me.id);
			},
		},

		list: {
			params: { $$strict: "remove", limit: limitRule(50), before: { type: "string", optional: true, max: 200 } },
			async handler(this: ConvThis, ctx: Ctx<{ limit: number; before?: string }>) {
				const me = callerOf(ctx);
				// Requests addressed to me (pending, or declined by me) are listed by `requests`, not here.
				const { items, next } = await this.listFor(me.id, ctx.params.limit, ctx.params.before, {
					$or: [{ status: "accepted" }, { initiator_id: me.id }],
				});
				if (next) ctx.meta.$responseHeaders = { "X-Next-Cursor": next };
				return Promise.all(items.map(c => this.presentFor(c, me.id)));
			},
		},

		requests: {
			params: { $$strict: "remove", limit: limitRule(50), before: { type: "string", optional: true, max: 200 } },
			async handler(this: ConvThis, ctx: Ctx<{ limit: number; before?: string }>) {
				const me = callerOf(ctx);
				const { items, next } = await this.listFor(me.id, ctx.params.limit, ctx.params.before, { status: "pending", initiator_id: { $ne: me.id } });
				if (next) ctx.meta.$responseHeaders = { "X-Next-Cursor": next };
				return Promise.all(items.map(c => this.presentFor(c, me.id)));
			},
		},

		settings: {
			async handler(this: ConvThis, ctx: Ctx) {
				const me = callerOf(ctx);
				const memberships = (await this.stores.memberships.find({ user_id: me.id })) as MembershipDoc[];
				const out: Record<string, { muted: boolean; pinned: boolean; hidden: boolean; muteUntil: string | null }> = {};
				for (const m of memberships) {
					out[m.conversation_id] = { muted: isMuted(m), pinned: !!m.pinned, hidden: !!m.hidden, muteUntil: m.mute_until ? new Date(m.mute_until).toISOString() : null };
				}
				return out;
			},
		},

		get: {
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = callerOf(ctx);
				const { conv, membership } = await this.loadForMember(ctx.params.conversationId, me.id);
				return presentConversation(conv, membership);
			},
		},

		update: {
			params: {
				$$strict: "remove",
				conversationId: idRule,
				name: { type: "string", optional: true, nullable: true, trim: true, max: 100 },
				avatar: { type: "string", optional: true, nullable: true, trim: true, max: 2048 },
			},
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; name?: string | null; avatar?: string | null }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				this.requireGroupManager(conv, me.id);
				const set: Record<string, unknown> = {};
				if (ctx.params.name !== undefined) set.name = ctx.params.name || null;
				const avatar = await this.checkAvatar(ctx, ctx.params.avatar, conv.avatar);
				if (avatar !== undefined) set.avatar = avatar;
				if (Object.keys(set).length === 0) return this.presentFor(conv, me.id);
				const updated = (await this.writeConversation(conv._id, () => this.stores.conversations.updateById(conv._id, { $set: { ...set, updated_at: new Date() } }))) as ConversationDoc;
				await this.forgetMeta(ctx, [conv._id]);
				if (set.name !== undefined && set.name !== conv.name) await this.systemMessage(ctx, conv._id, "renamed", null, me.id);
				if (set.avatar !== undefined && set.avatar !== conv.avatar) {
					// The old picture may now be nobody's: the files service decides, after this write.
					this.releaseFiles(ctx, [conv.avatar]);
					await this.systemMessage(ctx, conv._id, "avatar_changed", null, me.id);
				}
				const fresh = await this.reload(updated._id);
				await this.pushConversation(ctx, fresh, "conversation:updated", fresh.participants);
				return this.presentFor(fresh, me.id);
			},
		},

		updateAvatar: {
			params: { $$strict: "remove", conversationId: idRule, avatarUrl: { type: "string", trim: true, max: 2048, nullable: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; avatarUrl: string | null }>) {
				return ctx.call("conversations.update", { conversationId: ctx.params.conversationId, avatar: ctx.params.avatarUrl });
			},
		},

		accept: {
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				// Already accepted, a group, or asked by the initiator: nothing changes.
				if (conv.type !== "private" || conv.status === "accepted" || conv.initiator_id === me.id) return this.presentFor(conv, me.id);
				// With a block either way nobody could send here: accepting would only tell the other side.
				if ((await this.blockedBetween(me.id, conv.participants.filter(p => p !== me.id))).size > 0) throw forbidden("You cannot message this user");
				const updated = (await this.writeConversation(conv._id, () => this.stores.conversations.updateById(conv._id, { $set: { status: "accepted", updated_at: new Date() } }))) as ConversationDoc;
				await this.forgetMeta(ctx, [conv._id]);
				const live = await this.liveMembers(updated);
				if (conv.initiator_id && live.includes(conv.initiator_id)) {
					await this.push(ctx, [{ rooms: [userRoom(conv.initiator_id)], event: "request:accepted", payload: { conversationId: conv._id, acceptedBy: me.id } }]);
				}
				await this.pushConversation(ctx, updated, "conversation:updated", updated.participants);
				return this.presentFor(updated, me.id);
			},
		},

		decline: {
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				if (conv.type !== "private" || conv.initiator_id === me.id) throw forbidden("Only the addressee of a message request can decline it");
				if (conv.status === "declined") return this.presentFor(conv, me.id);
				if (conv.status === "accepted") throw conflict("This conversation was already accepted");
				const updated = (await this.writeConversation(conv._id, () => this.stores.conversations.updateById(conv._id, { $set: { status: "declined", updated_at: new Date() } }))) as ConversationDoc;
				await this.forgetMeta(ctx, [conv._id]);
				// Declining is always possible; an initiator with a block either way is not told of it.
				const told = await this.audienceOf(updated, me.id, true);
				if (conv.initiator_id && told.includes(conv.initiator_id)) {
					await this.push(ctx, [{ rooms: [userRoom(conv.initiator_id)], event: "request:declined", payload: { conversationId: conv._id, declinedBy: me.id } }]);
				}
				await this.pushConversation(ctx, updated, "conversation:updated", told);
				return this.presentFor(updated, me.id);
			},
		},

		addMember: {
			params: { $$strict: "remove", conversationId: idRule, userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				this.requireGroupManager(conv, me.id);
				const userId = ctx.params.userId;
				if (conv.participants.includes(userId)) return this.presentFor(conv, me.id);
				if (conv.participants.length >= MAX_GROUP_SIZE) throw conflict(`A group has at most ${MAX_GROUP_SIZE} members`);
				await this.requireUsersExist(ctx, [userId]);
				if ((await this.blockedBetween(userId, [me.id])).size > 0) throw forbidden("You cannot add this user");
				await this.writeConversation(conv._id, () => this.stores.conversations.updateById(conv._id, { $addToSet: { participants: userId }, $set: { updated_at: new Date() } }));
				await this.addMembership(conv._id, userId, conv.last_seq);
				await this.forgetMeta(ctx, [conv._id]);
				await this.systemMessage(ctx, conv._id, "member_added", userId, me.id);
				const fresh = await this.reload(conv._id);
				const payload = { conversationId: conv._id, userId };
				await this.pushToParticipants(ctx, fresh.participants, "members:added", payload, ["conversation:member-added"]);
				await this.pushConversation(ctx, fresh, "conversation:invited", [userId]);
				this.announceInvite(fresh, [userId], me);
				await this.pushConversation(ctx, fresh, "conversation:updated", fresh.participants.filter(p => p !== userId));
				return this.presentFor(fresh, me.id);
			},
		},

		removeMember: {
			params: { $$strict: "remove", conversationId: idRule, userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				if (conv.type !== "group") throw forbidden("Members are removed from groups only");
				const target = ctx.params.userId;
				if (!conv.participants.includes(target)) throw notFound("Member");
				if (target !== me.id) {
					const amAdmin = conv.admin_id === me.id;
					const amModerator = conv.moderator_ids.includes(me.id);
					const targetIsPlain = target !== conv.admin_id && !conv.moderator_ids.includes(target);
					// The admin removes anyone; moderators remove plain members; anyone removes itself.
					if (!(amAdmin || (amModerator && targetIsPlain))) throw forbidden("You may not remove this member");
				}
				const fresh = await this.removeFromGroup(ctx, conv, target, me.id);
				// The last member left: the group is gone. Someone who left sees it without its own settings.
				if (!fresh) return { ...presentConversation(conv, null), participants: [] };
				return target === me.id ? presentConversation(fresh, null) : this.presentFor(fresh, me.id);
			},
		},

		promoteModerator: {
			params: { $$strict: "remove", conversationId: idRule, userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				if (conv.type !== "group" || conv.admin_id !== me.id) throw forbidden("Only the group admin promotes moderators");
				const target = ctx.params.userId;
				if (!conv.participants.includes(target)) throw notFound("Member");
				if (target === conv.admin_id) throw badRequest("The admin is already above moderators");
				if (conv.moderator_ids.includes(target)) return this.presentFor(conv, me.id);
				return this.changeModerator(ctx, conv, target, true, me.id);
			},
		},

		demoteModerator: {
			params: { $$strict: "remove", conversationId: idRule, userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				if (conv.type !== "group" || conv.admin_id !== me.id) throw forbidden("Only the group admin demotes moderators");
				const target = ctx.params.userId;
				if (!conv.moderator_ids.includes(target)) return this.presentFor(conv, me.id);
				return this.changeModerator(ctx, conv, target, false, me.id);
			},
		},

		remove: {
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				if (conv.type === "group") {
					if (conv.admin_id !== me.id) throw forbidden("Only the group admin deletes the group");
					await this.deleteConversation(ctx, conv);
				} else {
					// A private chat is hidden for me only; a new message brings it back.
					await this.stores.memberships.updateMany({ key: membershipKey(conv._id, me.id) }, { $set: { hidden: true } });
					await this.forgetMeta(ctx, [conv._id]);
					await this.push(ctx, [{ rooms: [userRoom(me.id)], event: "conversation:deleted", payload: { conversationId: conv._id } }]);
				}
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		markRead: {
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				const moved = await this.stores.memberships.updateMany({ key: membershipKey(conv._id, me.id), last_read_seq: { $lt: conv.last_seq } }, { $set: { last_read_seq: conv.last_seq } });
				const last = conv.last_message;
				// Told only when the position moved: calling again and again sends nobody anything.
				if (moved > 0 && last && last.sender_id !== me.id) {
					const readAt = new Date().toISOString();
					// A receipt says the reader is here: not for anyone with a block either way.
					const audience = await this.audienceOf(conv, me.id, true);
					await this.pushToParticipants(ctx, audience, "message:read", { messageId: last.id, conversationId: conv._id, userId: me.id, readAt });
					await this.pushToParticipants(ctx, audience, "message:status", { messageId: last.id, userId: me.id, status: "read", timestamp: readAt });
				}
				return { unread_count: 0 };
			},
		},

		mute: {
			params: { $$strict: "remove", conversationId: idRule, muted: { type: "boolean", convert: true }, muteUntil: { type: "date", convert: true, optional: true, nullable: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; muted: boolean; muteUntil?: Date | null }>) {
				const until = ctx.params.muted && ctx.params.muteUntil ? ctx.params.muteUntil : null;
				return this.setMySettings(ctx, ctx.params.conversationId, { muted: ctx.params.muted, mute_until: until });
			},
		},

		pin: {
			params: { $$strict: "remove", conversationId: idRule, pinned: { type: "boolean", convert: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; pinned: boolean }>) {
				return this.setMySettings(ctx, ctx.params.conversationId, { pinned: ctx.params.pinned });
			},
		},

		hide: {
			params: { $$strict: "remove", conversationId: idRule, hidden: { type: "boolean", convert: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; hidden: boolean }>) {
				return this.setMySettings(ctx, ctx.params.conversationId, { hidden: ctx.params.hidden });
			},
		},

		nicknames: {
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				return Object.entries(conv.nicknames ?? {}).map(([id, nickname]) => ({ target_user_id: Number(id), targetUserId: Number(id), nickname }));
			},
		},

		setNickname: {
			params: { $$strict: "remove", conversationId: idRule, targetUserId: userIdRule, nickname: { type: "string", trim: true, max: 50, nullable: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; targetUserId: number; nickname: string | null }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				const target = ctx.params.targetUserId;
				if (!conv.participants.includes(target)) throw notFound("Member");
				// A nickname is shown to its target: it must not be a way around a block. In a private
				// chat the other side sees every nickname, so any block there stops them all.
				const concerned = conv.type === "private" ? conv.participants.filter(p => p !== me.id) : target === me.id ? [] : [target];
				if ((await this.blockedBetween(me.id, concerned)).size > 0) throw forbidden("You cannot set a nickname for this user");
				const field = `nicknames.${target}`;
				const update = ctx.params.nickname ? { $set: { [field]: ctx.params.nickname, updated_at: new Date() } } : { $unset: { [field]: true }, $set: { updated_at: new Date() } };
				const updated = (await this.writeConversation(conv._id, () => this.stores.conversations.updateById(conv._id, update))) as ConversationDoc;
				await this.pushConversation(ctx, updated, "conversation:updated", updated.participants);
				return Object.entries(updated.nicknames ?? {}).map(([id, nickname]) => ({ target_user_id: Number(id), targetUserId: Number(id), nickname }));
			},
		},

		clearHistory: {
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = callerOf(ctx);
				const { conv } = await this.loadForMember(ctx.params.conversationId, me.id);
				await this.stores.memberships.updateMany(
					{ key: membershipKey(conv._id, me.id) },
					{ $set: { cleared_seq: conv.last_seq, last_read_seq: conv.last_seq } },
				);
				await this.forgetMeta(ctx, [conv._id]);
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		join: {
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = callerOf(ctx);
				await this.loadForMember(ctx.params.conversationId, me.id);
				return { room: conversationRoom(ctx.params.conversationId) };
			},
		},

		leave: {
			params: { $$strict: "remove", conversationId: idRule },
			handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				callerOf(ctx);
				return { room: conversationRoom(ctx.params.conversationId) };
			},
		},

		typing: {
			params: { $$strict: "remove", conversationId: idRule, isTyping: { type: "boolean", convert: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; isTyping: boolean }>) {
				const me = callerOf(ctx);
				const { conversationId, isTyping } = ctx.params;
				// Typing is chatty: membership and blocks come from the cached metadata, which every
				// change (a member removed, a block) makes every node forget.
				const meta = await this.metaOf(conversationId);
				if (!meta || !meta.conv.participants.includes(me.id) || !meta.members.some(m => m.user_id === me.id)) throw notFound("Conversation");
				const memberKey = membershipKey(conversationId, me.id);
				// Throttled: the same state again within a second is not sent on.
				const prev = this.typingState.get(memberKey);
				const now = Date.now();
				if (prev && prev.isTyping === isTyping && now - prev.at < 1000) return null;
				this.pruneTypingCaches();
				this.typingState.set(memberKey, { at: now, isTyping });
				// Typing tells who is here now: nobody with a block either way hears it. Socket.IO's except
				// takes a list of rooms (the sender's socket id is one), and the gateway hands it on unchanged.
				const except = [...new Set(meta.blocks.filter(([a, b]) => a === me.id || b === me.id).map(([a, b]) => userRoom(a === me.id ? b : a)))];
				if (ctx.meta.socketId) except.push(ctx.meta.socketId);
				const item: PushItem = { rooms: [conversationRoom(conversationId)], event: "typing", payload: { conversationId, userId: me.id, isTyping } };
				if (except.length > 0) item.except = except;
				await this.push(ctx, [item]);
				return null;
			},
		},

		block: {
			params: { $$strict: "remove", targetUserId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ targetUserId: number }>) {
				const me = callerOf(ctx);
				const target = ctx.params.targetUserId;
				if (target === me.id) throw badRequest("You cannot block yourself");
				await this.requireUsersExist(ctx, [target], me.id);
				try {
					await this.stores.blocks.insert({ key: `${me.id}:${target}`, blocker_id: me.id, blocked_id: target, created_at: new Date() });
				} catch (err) {
					if (!isDuplicateKeyError(err)) throw err; // already blocked: fine
				}
				// Blocks are cached with each conversation of the two: every node forgets them all.
				await this.forgetMeta(ctx, "all");
				await this.push(ctx, [{ rooms: [userRoom(me.id)], event: "user:blocked", payload: { targetUserId: target } }]);
				return null;
			},
		},

		unblock: {
			params: { $$strict: "remove", targetUserId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ targetUserId: number }>) {
				const me = callerOf(ctx);
				await this.stores.blocks.removeMany({ key: `${me.id}:${ctx.params.targetUserId}` });
				await this.forgetMeta(ctx, "all");
				await this.push(ctx, [{ rooms: [userRoom(me.id)], event: "user:unblocked", payload: { targetUserId: ctx.params.targetUserId } }]);
				return null;
			},
		},

		blocked: {
			async handler(this: ConvThis, ctx: Ctx) {
				const me = callerOf(ctx);
				const rows = await this.stores.blocks.find({ blocker_id: me.id }, { sort: ["-created_at"] });
				return rows.map(r => ({ targetUserId: r.blocked_id, target_user_id: r.blocked_id, created_at: new Date(r.created_at).toISOString() }));
			},
		},

		// ---- for the messages service (not routed by the gateway) ----

		/** May the caller read this conversation? Its document and the caller's membership. */
		access: {
			visibility: "public",
			params: { conversationId: idRule, userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number }>): Promise<ActionResult<"conversations.access">> {
				const { conversationId, userId } = ctx.params;
				const meta = await this.metaOf(conversationId);
				const membership = meta?.conv.participants.includes(userId) ? meta.members.find(m => m.user_id === userId) : undefined;
				if (!meta || !membership) throw notFound("Conversation");
				return { conv: meta.conv, membership };
			},
		},

		/** May `senderId` send here now? Request state and blocks decide. */
		authorizeSend: {
			visibility: "public",
			params: { conversationId: idRule, senderId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; senderId: number }>): Promise<ActionResult<"conversations.authorizeSend">> {
				const { conversationId, senderId } = ctx.params;
				// From the cached metadata: no store round trip for a conversation already seen.
				const meta = await this.metaOf(conversationId);
				if (!meta || !meta.conv.participants.includes(senderId)) throw notFound("Conversation");
				const conv = meta.conv;
				// A deleted account stays in its private chats' participants (the other side still sees
				// who it was) but loses its memberships: the membership, not the list, decides who may send.
				const memberIds = new Set(meta.members.map(m => m.user_id));
				if (!memberIds.has(senderId)) throw notFound("Conversation");
				const others = conv.participants.filter(p => p !== senderId);
				if (conv.type === "private" && others.some(o => !memberIds.has(o))) throw forbidden("This account no longer exists");
				if (conv.status === "declined") throw forbidden("This message request was declined");
				if (conv.status === "pending" && conv.initiator_id !== senderId) throw forbidden("Accept the message request before replying");
				if (conv.type === "private" && meta.blocks.some(([a, b]) => a === senderId || b === senderId)) throw forbidden("You cannot message this user");
				// In a group, members who blocked the sender do not receive its messages live; who muted
				// it now lets the sender make the notification targets without asking again.
				return { conversation: conv, ...sendingSkips(meta, senderId) };
			},
		},

		/** A message was stored: move the conversation's head, unhide it, advance the sender's read position. */
		recordMessage: {
			visibility: "public",
			params: { conversationId: idRule, seq: { type: "number", integer: true, positive: true }, senderId: userIdRule, lastMessage: "object" },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; seq: number; senderId: number; lastMessage: Record<string, unknown> }>) {
				const { conversationId, seq, senderId, lastMessage } = ctx.params;
				const now = new Date();
				// One write: the head, and the sender's own position (sent_seq: what it sent it has read),
				// a no-op when the head is already further along.
				const head = this.writeConversation(conversationId, () =>
					this.stores.conversations.updateMany(
						{ _id: conversationId, last_seq: { $lt: seq } },
						{ $set: { last_seq: seq, last_message: lastMessage, last_activity_at: now, updated_at: now, [`sent_seq.${senderId}`]: seq } },
					),
				);
				// A new message brings a conversation back for whoever hid it: a second write only then.
				const unhide = async () => {
					const meta = await this.metaOf(conversationId);
					if (meta && !meta.members.some(m => m.hidden)) return;
					const unhidden = await this.stores.memberships.updateMany({ conversation_id: conversationId, hidden: true }, { $set: { hidden: false } });
					if (unhidden > 0) await this.forgetMeta(ctx, [conversationId]);
				};
				// Both awaited together: a failure of either is the caller's, never an unhandled rejection.
				await Promise.all([head, unhide()]);
				return true;
			},
		},

		/** A message was edited or deleted: the head shows it changed if it is the last one. */
		updateLastMessage: {
			visibility: "public",
			params: { conversationId: idRule, lastMessage: "object" },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; lastMessage: { id: string } & Record<string, unknown> }>) {
				await this.writeConversation(ctx.params.conversationId, () =>
					this.stores.conversations.updateMany({ _id: ctx.params.conversationId, "last_message.id": ctx.params.lastMessage.id }, { $set: { last_message: ctx.params.lastMessage } }),
				);
				return true;
			},
		},

		/** Read receipts: a member's read position only moves forward. */
		advanceRead: {
			visibility: "public",
			params: { conversationId: idRule, userId: userIdRule, seq: { type: "number", integer: true, min: 0 } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number; seq: number }>) {
				const { conversationId, userId, seq } = ctx.params;
				await this.stores.memberships.updateMany({ key: membershipKey(conversationId, userId), last_read_seq: { $lt: seq } }, { $set: { last_read_seq: seq } });
				return true;
			},
		},

		/**
		 * Who gets a notification for a new message: not the sender, not who blocked it, not who
		 * muted the conversation. For the outbox sweep; messages.send has it from authorizeSend.
		 */
		notificationTargets: {
			visibility: "public",
			params: { conversationId: idRule, senderId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; senderId: number }>): Promise<ActionResult<"conversations.notificationTargets">> {
				const { conversationId, senderId } = ctx.params;
				const meta = await this.metaOf(conversationId);
				return meta ? notificationTargetsOf(meta.conv, senderId, sendingSkips(meta, senderId)) : null;
			},
		},

		/** Who is in a conversation now (for pushing a system message). */
		participantsOf: {
			visibility: "public",
			params: { conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>): Promise<ActionResult<"conversations.participantsOf">> {
				return (await this.metaOf(ctx.params.conversationId))?.conv.participants ?? [];
			},
		},

		/**
		 * Who hears of `userId`'s action in a conversation: its live members (a deleted account has
		 * none), less those with a block with userId either way (`either`, for receipts), or less
		 * only those who blocked userId (for edits and deletions of its messages: what they never
		 * got live, they are not told changed).
		 */
		audience: {
			visibility: "public",
			params: { conversationId: idRule, userId: userIdRule, either: "boolean" },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number; either: boolean }>): Promise<ActionResult<"conversations.audience">> {
				const meta = await this.metaOf(ctx.params.conversationId);
				return meta ? this.audienceFromMeta(meta, ctx.params.userId, ctx.params.either) : [];
			},
		},

		/** The ids among `others` with a block with userId, either way (the users service shows them offline). */
		blockRelations: {
			visibility: "public",
			params: { userId: userIdRule, others: { type: "array", max: 1000, items: userIdRule } },
			async handler(this: ConvThis, ctx: Ctx<{ userId: number; others: number[] }>): Promise<ActionResult<"conversations.blockRelations">> {
				const others = [...new Set(ctx.params.others)].filter(id => id !== ctx.params.userId);
				return [...(await this.blockedBetween(ctx.params.userId, others))];
			},
		},

		/** Which of these files are some group's picture (the files service asks before deleting one). */
		fileRefs: {
			visibility: "public",
			params: { fileIds: fileIdsRule },
			async handler(this: ConvThis, ctx: Ctx<{ fileIds: string[] }>) {
				const wanted = [...new Set(ctx.params.fileIds)];
				if (wanted.length === 0) return [];
				const rows = await this.stores.conversations.find({ avatar: { $in: wanted.map(filePath) } });
				return [...new Set(rows.map(r => fileIdOfPath(r.avatar as string)).filter((id): id is string => !!id))];
			},
		},

		/** Another conversations node changed these conversations (or blocks: "all"): this node's cached metadata goes. */
		forgetMeta: {
			visibility: "public",
			params: { ids: [{ type: "equal", value: "all" }, { type: "array", max: 10_000, items: idRule }] },
			async handler(this: ConvThis, ctx: Ctx<{ ids: string[] | "all" }>) {
				await this.metaCache.forget(ctx.params.ids);
				return true;
			},
		},

		/** The conversations a user belongs to (ids only), for message search. */
		idsOf: {
			visibility: "public",
			params: { userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ userId: number }>): Promise<ActionResult<"conversations.idsOf">> {
				const rows = (await this.stores.memberships.find({ user_id: ctx.params.userId })) as MembershipDoc[];
				return rows.map(r => ({ conversationId: r.conversation_id, clearedSeq: r.cleared_seq }));
			},
		},
	},

	events: {
		/**
		 * A deleted account leaves its groups. In its private chats it stays a participant (the
		 * other side keeps the history and sees who it was) but loses its membership: it reads and
		 * sends nothing there any more, and the other side cannot send to it (authorizeSend).
		 */
		async "users.user.deleted"(this: ConvThis, ctx: Context<{ userId: number }>) {
			const userId = ctx.params.userId;
			const convs = (await this.stores.conversations.find({ participants: userId })) as ConversationDoc[];
			const privateKeys: string[] = [];
			for (const conv of convs) {
				if (conv.type === "group") await this.removeFromGroup(ctx as Ctx<unknown>, conv, userId, userId);
				else privateKeys.push(membershipKey(conv._id, userId));
			}
			if (privateKeys.length > 0) {
				await this.stores.memberships.removeMany({ key: { $in: privateKeys } });
				await this.forgetMeta(ctx as Ctx<unknown>, convs.filter(c => c.type === "private").map(c => c._id));
				await this.forgetMembers(ctx as Ctx<unknown>, privateKeys);
				// Its sockets (the token lives on for a while) stop hearing typing there.
				await this.leaveRooms(ctx, { rooms: [userRoom(userId)], leave: convs.filter(c => c.type === "private").map(c => conversationRoom(c._id)) });
			}
			await this.stores.blocks.removeMany({ $or: [{ blocker_id: userId }, { blocked_id: userId }] });
			await this.forgetMeta(ctx as Ctx<unknown>, "all");
		},

		/** A membership ended somewhere in the cluster: this node's typing cache forgets it too. */
		[MEMBERSHIP_REMOVED](this: ConvThis, ctx: Context<{ keys: string[] }>) {
			for (const key of ctx.params.keys) this.typingState.delete(key);
		},

	},

	methods: {
		/** Promote or demote a checked member: store it, say it in a system message, tell everyone. */
		async changeModerator(this: ConvThis, ctx: Ctx<unknown>, conv: ConversationDoc, target: number, promoted: boolean, actorId: number) {
			const change = promoted ? { $addToSet: { moderator_ids: target } } : { $pull: { moderator_ids: target } };
			await this.writeConversation(conv._id, () => this.stores.conversations.updateById(conv._id, { ...change, $set: { updated_at: new Date() } }));
			await this.forgetMeta(ctx, [conv._id]);
			await this.systemMessage(ctx, conv._id, promoted ? "moderator_promoted" : "moderator_demoted", target, actorId);
			const fresh = await this.reload(conv._id);
			await this.pushToParticipants(ctx, fresh.participants, "conversation:moderator-updated", { conversationId: conv._id, userId: target, promoted });
			return this.presentFor(fresh, actorId);
		},

		/** The caller's own settings of a conversation it belongs to; answers 204. */
		async setMySettings(this: ConvThis, ctx: Ctx<unknown>, conversationId: string, set: Partial<MembershipDoc>) {
			const me = callerOf(ctx);
			const { conv } = await this.loadForMember(conversationId, me.id);
			await this.stores.memberships.updateMany({ key: membershipKey(conv._id, me.id) }, { $set: set });
			await this.forgetMeta(ctx, [conv._id]);
			ctx.meta.$statusCode = 204;
			return null;
		},

		/** A group_invite notification for each added user, through the durable event bus. */
		announceInvite(this: ConvThis, conv: ConversationDoc, userIds: number[], inviter: AuthUser) {
			const event = { eventId: `invite:${conv._id}:${crypto.randomUUID()}`, conversationId: conv._id, conversationName: conv.name, inviterId: inviter.id, inviterName: inviter.username, userIds };
			this.inBackground("group_invite.created publish", () => this.publishPatiently(CHANNELS.groupInviteCreated, event));
		},

		/** What the message path needs of a conversation (lib/chat.ts ConversationMeta), cached. */
		metaOf(this: ConvThis, conversationId: string) {
			return this.metaCache.get(conversationId, () => this.loadMeta(conversationId));
		},

		async loadMeta(this: ConvThis, conversationId: string): Promise<ConversationMeta | null> {
			const conv = (await this.stores.conversations.findById(conversationId)) as ConversationDoc | null;
			if (!conv) return null;
			const [members, blocks] = await Promise.all([
				this.membershipsOf(conversationId),
				conv.participants.length < 2 ? [] : this.stores.blocks.find({ blocker_id: { $in: conv.participants }, blocked_id: { $in: conv.participants } }),
			]);
			return {
				conv: {
					_id: conv._id,
					type: conv.type,
					participants: conv.participants,
					name: conv.name,
					avatar: conv.avatar,
					admin_id: conv.admin_id,
					moderator_ids: conv.moderator_ids,
					initiator_id: conv.initiator_id,
					status: conv.status,
				},
				members: members.map(m => ({ user_id: m.user_id, cleared_seq: m.cleared_seq, muted: !!m.muted, mute_until: m.mute_until ? new Date(m.mute_until).toISOString() : null, hidden: !!m.hidden })),
				blocks: blocks.map(b => [b.blocker_id as number, b.blocked_id as number]),
			};
		},

		/**
		 * After a change to conversations' members, settings, roles or blocks: forgotten here, and on
		 * every other conversations node before the change is answered (a removed member or a new
		 * block holds at once everywhere).
		 */
		async forgetMeta(this: ConvThis, ctx: Ctx<unknown> | null, ids: string[] | "all") {
			await this.metaCache.forget(ids);
			await forgetOnOtherNodes(this.broker, "conversations.forgetMeta", { ids }, FORGET_TIMEOUT_MS, ctx?.requestID);
		},

		/** audienceOf, from the cached metadata. */
		audienceFromMeta(this: ConvThis, meta: ConversationMeta, userId: number, either: boolean) {
			const memberIds = new Set(meta.members.map(m => m.user_id));
			// A deleted account is a participant of its private chats without a membership.
			const live = meta.conv.type === "group" ? meta.conv.participants : meta.conv.participants.filter(p => memberIds.has(p));
			const shut = new Set<number>();
			for (const [blocker, blocked] of meta.blocks) {
				if (blocked === userId) shut.add(blocker);
				else if (either && blocker === userId) shut.add(blocked);
			}
			return live.filter(m => !shut.has(m));
		},

		/** Not a member and not existing look the same: no conversation's existence leaks. */
		async loadForMember(this: ConvThis, conversationId: string, userId: number) {
			const conv = (await this.stores.conversations.findById(conversationId)) as ConversationDoc | null;
			if (!conv || !conv.participants.includes(userId)) throw notFound("Conversation");
			const membership = (await this.stores.memberships.findOne({ key: membershipKey(conversationId, userId) })) as MembershipDoc | null;
			if (!membership) throw notFound("Conversation");
			return { conv, membership };
		},

		async membershipsOf(this: ConvThis, conversationId: string) {
			return (await this.stores.memberships.find({ conversation_id: conversationId })) as MembershipDoc[];
		},

		async addMembership(this: ConvThis, conversationId: string, userId: number, lastSeq: number) {
			try {
				await this.stores.memberships.insert({
					key: membershipKey(conversationId, userId),
					conversation_id: conversationId,
					user_id: userId,
					joined_at: new Date(),
					// A new member starts with nothing unread and sees history from here on.
					last_read_seq: lastSeq,
					cleared_seq: lastSeq,
					muted: false,
					mute_until: null,
					pinned: false,
					hidden: false,
				});
			} catch (err) {
				if (!isDuplicateKeyError(err)) throw err;
			}
		},

		async presentFor(this: ConvThis, conv: ConversationDoc, userId: number) {
			const m = (await this.stores.memberships.findOne({ key: membershipKey(conv._id, userId) })) as MembershipDoc | null;
			return presentConversation(conv, m);
		},

		/** Each member gets the conversation as it sees it (its own unread count and settings). */
		async pushConversation(this: ConvThis, ctx: Ctx<unknown>, conv: ConversationDoc, event: string, to: number[], extra: Record<string, unknown> = {}) {
			const memberships = new Map((await this.membershipsOf(conv._id)).map(m => [m.user_id, m]));
			// Only members: a deleted account's token, still valid for a while, hears nothing.
			const items: PushItem[] = to.filter(uid => memberships.has(uid)).map(uid => ({
				rooms: [userRoom(uid)],
				event,
				payload: { conversationId: conv._id, conversation: presentConversation(conv, memberships.get(uid) ?? null), ...extra },
			}));
			await this.push(ctx, items);
		},

		async pushToParticipants(this: ConvThis, ctx: Ctx<unknown>, participants: number[], event: string, payload: unknown, aliases: string[] = []) {
			const rooms = participants.map(userRoom);
			await this.push(ctx, [event, ...aliases].map(e => ({ rooms, event: e, payload })));
		},

		async systemMessage(this: ConvThis, ctx: Ctx<unknown>, conversationId: string, event: string, userId: number | null, actorId: number) {
			await ctx.call("messages.createSystem", { conversationId, event, userId, actorId });
		},

		/** Which of `others` blocked `a` or were blocked by `a`. */
		async blockedBetween(this: ConvThis, a: number, others: number[]) {
			if (others.length === 0) return new Set<number>();
			const rows = await this.stores.blocks.find({
				$or: [
					{ blocker_id: a, blocked_id: { $in: others } },
					{ blocker_id: { $in: others }, blocked_id: a },
				],
			});
			return new Set(rows.map(r => (r.blocker_id === a ? r.blocked_id : r.blocker_id) as number));
		},

		/** Which of `among` blocked `userId`. */
		async blockersOf(this: ConvThis, userId: number, among: number[]) {
			if (among.length === 0) return new Set<number>();
			const rows = await this.stores.blocks.find({ blocker_id: { $in: among }, blocked_id: userId });
			return new Set(rows.map(r => r.blocker_id as number));
		},

		/** Participants that are members: all of a group; in a private chat, not a deleted account. */
		async liveMembers(this: ConvThis, conv: ConversationDoc) {
			if (conv.type === "group") return conv.participants;
			const members = new Set((await this.membershipsOf(conv._id)).map(m => m.user_id));
			return conv.participants.filter(p => members.has(p));
		},

		async audienceOf(this: ConvThis, conv: ConversationDoc, userId: number, either: boolean) {
			const members = await this.liveMembers(conv);
			const others = members.filter(m => m !== userId);
			const shut = either ? await this.blockedBetween(userId, others) : await this.blockersOf(userId, others);
			return members.filter(m => !shut.has(m));
		},

		/** These users exist; and the caller, when given, still does (else 401: its account is gone). */
		async requireUsersExist(this: ConvThis, ctx: Ctx<unknown>, ids: number[], callerId?: number) {
			const asked = callerId === undefined ? ids : [callerId, ...ids];
			const found = await callAction(ctx, "users.resolve", { ids: asked });
			const known = new Set(found.map(u => u.id));
			if (callerId !== undefined && !known.has(callerId)) throw unauthorized("This account no longer exists");
			const missing = ids.filter(id => !known.has(id));
			if (missing.length > 0) throw appNotFoundUsers(missing);
		},

		/**
		 * A group picture as given: undefined (unchanged), null (none), or `/files/<id>` of an image
		 * the caller uploaded (the files service checks it). Any other form, an outside URL above all
		 * (it would show every member's address to that server), is refused. The picture the group
		 * already has is kept without asking again (another manager may have uploaded it).
		 */
		async checkAvatar(this: ConvThis, ctx: Ctx<unknown>, given: string | null | undefined, current: string | null) {
			if (given === undefined) return undefined;
			if (given === null || given === "") return null;
			if (!FILE_PATH_PATTERN.test(given)) {
				const message = "A group picture must be an image uploaded to this server: /files/<id>";
				throw validationError(message, [{ field: "avatar", type: "file", message }]);
			}
			if (given === current) return given;
			await ctx.call("files.verifyImage", { ref: given, ownerId: callerOf(ctx).id });
			return given;
		},

		/** Files this service stopped using; the files service deletes those nobody uses. Never fails the caller. */
		releaseFiles(this: ConvThis, ctx: Ctx<unknown>, refs: (string | null)[]) {
			const fileIds = [...new Set(refs.map(fileIdOfPath).filter((id): id is string => !!id))];
			if (fileIds.length === 0) return;
			this.inBackground("files.release", () =>
				callAction(ctx, "files.release", { fileIds }).catch(err => this.logger.warn(`Could not release files ${fileIds.join(",")}`, (err as Error).message)),
			);
		},

		/** Memberships that ended: every conversations node stops trusting its cached checks of them. */
		async forgetMembers(this: ConvThis, ctx: Ctx<unknown>, keys: string[]) {
			for (const key of keys) this.typingState.delete(key);
			await ctx.broadcast(MEMBERSHIP_REMOVED, { keys }, "conversations");
		},

		/**
		 * Writes to one conversation document run one at a time in this process. FerretDB 1.x applies
		 * an update by reading the document and writing all of it back: a member added or removed
		 * while a message moves the head ($addToSet / $pull beside $set) would otherwise be lost.
		 */
		writeConversation<T>(this: ConvThis, conversationId: string, write: () => Promise<T>): Promise<T> {
			return this.convWrites.run(conversationId, write);
		},

		/** The typing cache keeps at most MAX_TYPING_CACHE entries: stale ones go first. */
		pruneTypingCaches(this: ConvThis) {
			if (this.typingState.size < MAX_TYPING_CACHE) return;
			const now = Date.now();
			for (const [key, state] of this.typingState) if (now - state.at > 5_000) this.typingState.delete(key);
			if (this.typingState.size >= MAX_TYPING_CACHE) this.typingState.clear();
		},

		requireGroupManager(conv: ConversationDoc, userId: number) {
			if (conv.type !== "group") throw forbidden("Only groups have admins and moderators");
			if (conv.admin_id !== userId && !conv.moderator_ids.includes(userId)) throw forbidden("Only the group admin or a moderator may do this");
		},

		async reload(this: ConvThis, conversationId: string) {
			const conv = (await this.stores.conversations.findById(conversationId)) as ConversationDoc | null;
			if (!conv) throw notFound("Conversation");
			return conv;
		},

		/** Remove `userId` from a group; the admin's leaving hands the group on. Null when the group is gone. */
		async removeFromGroup(this: ConvThis, ctx: Ctx<unknown>, conv: ConversationDoc, userId: number, actorId: number) {
			const remaining = conv.participants.filter(p => p !== userId);
			if (remaining.length === 0) {
				await this.deleteConversation(ctx, conv);
				return null;
			}
			const set: Record<string, unknown> = { updated_at: new Date() };
			let newAdmin: number | null = null;
			if (conv.admin_id === userId) {
				// The longest-standing moderator, else the longest-standing member, becomes admin.
				const memberships = (await this.membershipsOf(conv._id)).filter(m => m.user_id !== userId).sort((a, b) => new Date(a.joined_at).getTime() - new Date(b.joined_at).getTime());
				const mods = memberships.filter(m => conv.moderator_ids.includes(m.user_id));
				newAdmin = (mods[0] ?? memberships[0])?.user_id ?? remaining[0];
				set.admin_id = newAdmin;
			}
			// $pull with a condition is not supported everywhere (FerretDB); the new list is set instead.
			set.moderator_ids = conv.moderator_ids.filter(id => id !== userId && id !== newAdmin);
			await this.writeConversation(conv._id, () => this.stores.conversations.updateById(conv._id, { $pull: { participants: userId }, $set: set }));
			await this.stores.memberships.removeMany({ key: membershipKey(conv._id, userId) });
			await this.forgetMeta(ctx, [conv._id]);
			await this.forgetMembers(ctx, [membershipKey(conv._id, userId)]);
			await this.systemMessage(ctx, conv._id, actorId === userId ? "member_left" : "member_removed", userId, actorId);
			if (newAdmin != null) await this.systemMessage(ctx, conv._id, "admin_changed", newAdmin, actorId);
			const fresh = await this.reload(conv._id);
			const payload = { conversationId: conv._id, userId };
			await this.pushToParticipants(ctx, [...fresh.participants, userId], "members:removed", payload, ["conversation:member-removed"]);
			await this.pushConversation(ctx, fresh, "conversation:updated", fresh.participants);
			// The removed user's sockets stop getting this conversation's typing and presence.
			await this.leaveRooms(ctx, { rooms: [userRoom(userId)], leave: [conversationRoom(conv._id)] });
			return fresh;
		},

		async deleteConversation(this: ConvThis, ctx: Ctx<unknown>, conv: ConversationDoc) {
			await this.stores.conversations.removeMany({ _id: conv._id });
			await this.stores.memberships.removeMany({ conversation_id: conv._id });
			await this.forgetMeta(ctx, [conv._id]);
			await this.forgetMembers(ctx, conv.participants.map(uid => membershipKey(conv._id, uid)));
			// The messages service releases its attachments; the group's picture is this service's.
			await ctx.call("messages.purgeConversation", { conversationId: conv._id });
			this.releaseFiles(ctx, [conv.avatar]);
			await this.pushToParticipants(ctx, conv.participants, "conversation:deleted", { conversationId: conv._id });
			await this.leaveRooms(ctx, { rooms: conv.participants.map(userRoom), leave: [conversationRoom(conv._id)] });
		},

		/** Conversations of a user by last activity, newest first, skipping those it hid. */
		async listFor(this: ConvThis, userId: number, limit: number, before: string | undefined, filter: Record<string, unknown>) {
			let cursor = before ? decodeCursor(before) : null;
			if (before && !cursor) throw validationError("Invalid cursor", [{ field: "before", type: "cursor", message: "Pass back the X-Next-Cursor value" }]);
			const items: ConversationDoc[] = [];
			let next: string | null = null;
			// Hidden conversations are dropped after the query, so a page may take a few rounds.
			for (let round = 0; round < 20; round++) {
				const and: Record<string, unknown>[] = [{ participants: userId }, filter];
				if (cursor) and.push({ $or: [{ last_activity_at: { $lt: cursor.at } }, { last_activity_at: cursor.at, _id: { $lt: cursor.id } }] });
				const batch = (await this.stores.conversations.find({ $and: and }, { sort: ["-last_activity_at", "-_id"], limit: limit + 1 })) as ConversationDoc[];
				// Listed only with a membership, and not hidden: a deleted account stays a participant
				// of its private chats, and its token must not list them.
				const shown = new Set(
					(await this.stores.memberships.find({ key: { $in: batch.map(c => membershipKey(c._id, userId)) } })).filter(m => !m.hidden).map(m => m.conversation_id as string),
				);
				let consumed = 0;
				for (const conv of batch) {
					if (items.length === limit) break;
					consumed++;
					if (shown.has(conv._id)) items.push(conv);
				}
				if (consumed === 0) break;
				const last = batch[consumed - 1];
				if (items.length === limit) {
					// More after the last one taken? Then the client gets a cursor to it.
					next = consumed < batch.length ? encodeCursor(last.last_activity_at, last._id) : null;
					break;
				}
				if (batch.length <= limit) break; // the store has nothing more
				cursor = { at: new Date(last.last_activity_at), id: last._id };
			}
			return { items, next };
		},
	},

	created(this: ConvThis) {
		this.typingState = new Map();
		this.metaCache = new ReadCache(this.broker, "conversations.meta", META_TTL_SECONDS);
		this.convWrites = new SerialWork();
	},
};

function appNotFoundUsers(ids: number[]) {
	const err = notFound("User");
	err.data = ids.map(id => ({ field: "participants", type: "notFound", message: `No user ${id}` }));
	return err;
}

export default ConversationsService;
