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
import { arrayOf, body, errorExample, errorResponse, errors, NEXT_CURSOR, noContent, ok, ref, schema } from "../lib/api-schemas";
import { callAction, type ActionResult } from "../lib/contracts";
import { CHANNELS } from "../lib/durable-events";
import { appError, badRequest, conflict, forbidden, notFound, unauthorized, validationError } from "../lib/errors";
import { ReadCache, forgetOnOtherNodes } from "../lib/read-cache";
import { SerialWork } from "../lib/serial-work";
import type { CallMeta } from "../lib/meta";
import type { ChatServerPayloads, ConversationEventName, EventWithPayload } from "../lib/socket-events";
import type { AuthUser } from "../lib/tokens";
import { memberOf, userOf } from "../middlewares/authorize.middleware";
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
/** The same for a user's private-chat partners (forgotten when a private chat is accepted or an account goes). */
const PARTNERS_TTL_SECONDS = 600;

/** The members a message mentions (messages.service parses them; at most every member of a group). */
const mentionsRule = { type: "array", max: MAX_GROUP_SIZE, items: userIdRule } as const;
/** The documents' words for the conversationId param (components.parameters.ConversationId). */
const CONVERSATION_ID_TEXT = "The conversation's id. A conversation the caller is not a member of answers 404, like one that does not exist.";
/** What a `member` check leaves here: the Authorize middleware calls this service's own loadForMember, so the full documents. */
type MemberDocs = { conv: ConversationDoc; membership: MembershipDoc };

interface ConvThis extends DocsMixinThis<Collections>, PushThis, PublisherThis {
	announceInvite(conv: ConversationDoc, userIds: number[], inviter: AuthUser): void;
	setMySettings(ctx: Ctx<unknown>, set: Partial<MembershipDoc>): Promise<null>;
	changeModerator(ctx: Ctx<unknown>, conv: ConversationDoc, target: number, promoted: boolean, actorId: number): Promise<ReturnType<typeof presentConversation>>;
	typingState: Map<string, { at: number; isTyping: boolean }>;
	metaCache: ReadCache<ConversationMeta>;
	metaOf(conversationId: string): Promise<ConversationMeta | null>;
	loadMeta(conversationId: string): Promise<ConversationMeta | null>;
	forgetMeta(ctx: Ctx<unknown> | null, ids: string[] | "all"): Promise<void>;
	partnersCache: ReadCache<number[]>;
	loadPartners(userId: number): Promise<number[]>;
	forgetPartners(ctx: Ctx<unknown> | null, userIds: number[]): Promise<void>;
	mentionKeys(meta: ConversationMeta, senderId: number, mentions: number[]): string[];
	audienceFromMeta(meta: ConversationMeta, userId: number, either: boolean): number[];
	loadForMember(conversationId: string, userId: number): Promise<{ conv: ConversationDoc; membership: MembershipDoc }>;
	membershipsOf(conversationId: string): Promise<MembershipDoc[]>;
	addMembership(conversationId: string, userId: number, lastSeq: number): Promise<void>;
	presentFor(conv: ConversationDoc, userId: number): Promise<ReturnType<typeof presentConversation>>;
	pushConversation(ctx: Ctx<unknown>, conv: ConversationDoc, event: ConversationEventName, to: number[]): Promise<void>;
	pushToParticipants<E extends keyof ChatServerPayloads>(ctx: Ctx<unknown>, participants: number[], event: E, payload: ChatServerPayloads[E], aliases?: EventWithPayload<ChatServerPayloads[E]>[]): Promise<void>;
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
	updateMemberships(conversationId: string, query: Record<string, unknown>, update: Record<string, unknown>): Promise<number>;
	convWrites: SerialWork;
	memberWrites: SerialWork;
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
						// The seqs of unread messages that mention the member (unread_mentions; trimmed as it reads).
						mention_seqs: [Number],
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
			rest: "POST /conversations",
			socket: { namespace: "/chat", event: "conversation:create" },
			openapi: {
				operationId: "createConversation",
				tag: "Conversations",
				summary: "Start a private chat or create a group",
				description:
					"A new private chat starts `pending` (a message request): the caller, its initiator, may send; the other user must accept before replying. " +
					"A private chat between two users exists once: asking for it again answers the existing one (200) and unhides it for the caller. " +
					"A group starts `accepted` with the caller as its admin, and gets a `group_created` system message. " +
					"Every participant, the creator included, gets `conversation:created` on the `/chat` socket.",
				params: {
					participantIds: `The other users' ids (integers or numeric strings). A group has at most ${MAX_GROUP_SIZE} members, the creator included.`,
					participants: `The other users' ids (integers or numeric strings). A group has at most ${MAX_GROUP_SIZE} members, the creator included.`,
					isGroup: "`true`: a group; `false`: a private chat.",
					name: "A group's name (trimmed).",
					avatar: "A group's picture: `/files/<fileId>` of an image the caller uploaded (400 `VALIDATION_ERROR` otherwise, 403 for someone else's file).",
				},
				// Either participants or participantIds is required, which the flat params cannot say.
				requestBody: body(schema("CreateConversationRequest")),
				responses: {
					201: ok("Created.", schema("Conversation")),
					200: ok("The private chat between the two users already existed; here it is.", schema("Conversation")),
					403: errorResponse("`FORBIDDEN`: one of the two users of a private chat blocked the other, or a group would include someone the caller blocked or who blocked it (`details` names each one).", {
						blocked: errorExample(403, "FORBIDDEN", "You cannot start a conversation with this user"),
						groupWithBlocked: errorExample(403, "FORBIDDEN", "You cannot start a group with a user you blocked or who blocked you", [{ field: "participants", type: "blocked", message: "User 12" }]),
					}),
					404: errorResponse("`NOT_FOUND`: a participant does not exist (`details` names each one).", {
						noSuchUser: errorExample(404, "NOT_FOUND", "User not found", [{ field: "participants", type: "notFound", message: "No user 99" }]),
					}),
					400: errorResponse("`VALIDATION_ERROR`: no participants, no one but the caller, more than one other user for a private chat, too many members, or a bad field.", {
						noOne: errorExample(400, "VALIDATION_ERROR", "A conversation needs someone else", [{ field: "participants", type: "arrayMin", message: "Give at least one other user" }]),
						privateOfThree: errorExample(400, "VALIDATION_ERROR", "A private conversation has exactly one other participant", [
							{ field: "participants", type: "arrayLength", message: "Exactly one other user" },
						]),
					}),
					...errors(401, 413, 429, 503),
				},
			},
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
				const me = userOf(ctx);
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
						await this.updateMemberships(existing._id, { key: membershipKey(existing._id, me.id) }, { $set: { hidden: false } });
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
			rest: "GET /conversations",
			socket: { namespace: "/chat", event: "conversation:list" },
			openapi: {
				operationId: "listConversations",
				tag: "Conversations",
				summary: "The caller's conversations, by last activity",
				description:
					"Newest activity first, a page at a time: while there is more, the answer has an `X-Next-Cursor` header to pass back as `before`. " +
					"Message requests addressed to the caller (pending, or declined by it) are not listed here but under /conversations/requests; " +
					"conversations the caller hid are left out until a new message arrives.",
				params: {
					limit: "At most this many conversations.",
					before: "The `X-Next-Cursor` header of the previous page, passed back unchanged. Leave it out for the first page.",
				},
				responses: {
					200: ok("One page of conversations.", arrayOf(schema("Conversation")), NEXT_CURSOR),
					...errors(400, 401, 429, 503),
				},
			},
			params: { $$strict: "remove", limit: limitRule(50), before: { type: "string", optional: true, max: 200 } },
			async handler(this: ConvThis, ctx: Ctx<{ limit: number; before?: string }>) {
				const me = userOf(ctx);
				// Requests addressed to me (pending, or declined by me) are listed by `requests`, not here.
				const { items, next } = await this.listFor(me.id, ctx.params.limit, ctx.params.before, {
					$or: [{ status: "accepted" }, { initiator_id: me.id }],
				});
				if (next) ctx.meta.$responseHeaders = { "X-Next-Cursor": next };
				return Promise.all(items.map(c => this.presentFor(c, me.id)));
			},
		},

		requests: {
			rest: "GET /conversations/requests",
			openapi: {
				operationId: "listConversationRequests",
				tag: "Conversations",
				summary: "Pending message requests addressed to the caller",
				description: "Private chats someone else started with the caller that it has not accepted or declined yet, by last activity, newest first. Paged as GET /conversations.",
				params: {
					limit: "At most this many conversations.",
					before: "The `X-Next-Cursor` header of the previous page, passed back unchanged. Leave it out for the first page.",
				},
				responses: {
					200: ok("One page of requests.", arrayOf(schema("Conversation")), NEXT_CURSOR),
					...errors(400, 401, 429, 503),
				},
			},
			params: { $$strict: "remove", limit: limitRule(50), before: { type: "string", optional: true, max: 200 } },
			async handler(this: ConvThis, ctx: Ctx<{ limit: number; before?: string }>) {
				const me = userOf(ctx);
				const { items, next } = await this.listFor(me.id, ctx.params.limit, ctx.params.before, { status: "pending", initiator_id: { $ne: me.id } });
				if (next) ctx.meta.$responseHeaders = { "X-Next-Cursor": next };
				return Promise.all(items.map(c => this.presentFor(c, me.id)));
			},
		},

		settings: {
			rest: "GET /conversations/settings",
			openapi: {
				operationId: "getConversationSettings",
				tag: "Conversations",
				summary: "The caller's settings of every conversation it belongs to",
				responses: {
					200: ok("Settings by conversation id.", {
						type: "object",
						additionalProperties: schema("ConversationSettings"),
						example: { "66a1f0c2e4b0a1b2c3d4e5f6": { muted: true, pinned: false, hidden: false, muteUntil: "2024-07-26T08:00:00.000Z" } },
					}),
					...errors(401, 429, 503),
				},
			},
			async handler(this: ConvThis, ctx: Ctx) {
				const me = userOf(ctx);
				const memberships = (await this.stores.memberships.find({ user_id: me.id })) as MembershipDoc[];
				const out: Record<string, { muted: boolean; pinned: boolean; hidden: boolean; muteUntil: string | null }> = {};
				for (const m of memberships) {
					out[m.conversation_id] = { muted: isMuted(m), pinned: !!m.pinned, hidden: !!m.hidden, muteUntil: m.mute_until ? new Date(m.mute_until).toISOString() : null };
				}
				return out;
			},
		},

		get: {
			rest: "GET /conversations/:conversationId",
			socket: { namespace: "/chat", event: "conversation:get" },
			member: "conversationId",
			openapi: {
				operationId: "getConversation",
				tag: "Conversations",
				summary: "One conversation",
				params: { conversationId: CONVERSATION_ID_TEXT },
				responses: {
					200: ok("The conversation.", schema("Conversation")),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const { conv, membership } = memberOf<MemberDocs>(ctx);
				return presentConversation(conv, membership);
			},
		},

		update: {
			rest: "PATCH /conversations/:conversationId",
			socket: { namespace: "/chat", event: "conversation:update" },
			member: "conversationId",
			openapi: {
				operationId: "updateConversation",
				tag: "Conversations",
				summary: "Rename a group or change its picture (group admin or moderator)",
				description: "Each change adds a system message (`renamed`, `avatar_changed`); every member gets `conversation:updated`.",
				params: {
					conversationId: CONVERSATION_ID_TEXT,
					name: "Trimmed; `null` or an empty string removes it.",
					avatar: "`/files/<fileId>` of an image the caller uploaded; `null` or an empty string removes it.",
				},
				responses: {
					200: ok("The updated conversation.", schema("Conversation")),
					403: errorResponse("`FORBIDDEN`: not a group, or the caller is neither its admin nor a moderator.", {
						notManager: errorExample(403, "FORBIDDEN", "Only the group admin or a moderator may do this"),
						notGroup: errorExample(403, "FORBIDDEN", "Only groups have admins and moderators"),
					}),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 413, 429, 503),
				},
			},
			params: {
				$$strict: "remove",
				conversationId: idRule,
				name: { type: "string", optional: true, nullable: true, trim: true, max: 100 },
				avatar: { type: "string", optional: true, nullable: true, trim: true, max: 2048 },
			},
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; name?: string | null; avatar?: string | null }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
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
			socket: { namespace: "/chat", event: "conversation:update-avatar" },
			openapi: {
				tag: "Conversations",
				summary: "Change a group's picture (group admin or moderator): `conversation:update` with `avatar` set to `avatarUrl`.",
				params: {
					conversationId: CONVERSATION_ID_TEXT,
					avatarUrl: "`/files/<fileId>` of an image the caller uploaded; `null` or an empty string removes it.",
				},
				ack: schema("Conversation"),
			},
			params: { $$strict: "remove", conversationId: idRule, avatarUrl: { type: "string", trim: true, max: 2048, nullable: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; avatarUrl: string | null }>) {
				return ctx.call("conversations.update", { conversationId: ctx.params.conversationId, avatar: ctx.params.avatarUrl });
			},
		},

		accept: {
			rest: "POST /conversations/:conversationId/accept",
			socket: { namespace: "/chat", event: "conversation:accept" },
			member: "conversationId",
			openapi: {
				operationId: "acceptConversation",
				tag: "Conversations",
				summary: "Accept a message request",
				description:
					"The addressee of a pending private chat accepts it (`status` becomes `accepted`); the initiator gets `request:accepted`. " +
					"Accepting a conversation that is already accepted, a group, or as the initiator changes nothing and returns it.",
				params: { conversationId: CONVERSATION_ID_TEXT },
				responses: {
					200: ok("The conversation.", schema("Conversation")),
					// Not in the hand-written document before the declarations: the handler has always answered it.
					403: errorResponse("`FORBIDDEN`: the caller and the initiator have a block between them, either way.", {
						blocked: errorExample(403, "FORBIDDEN", "You cannot message this user"),
					}),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
				// Already accepted, a group, or asked by the initiator: nothing changes.
				if (conv.type !== "private" || conv.status === "accepted" || conv.initiator_id === me.id) return this.presentFor(conv, me.id);
				// With a block either way nobody could send here: accepting would only tell the other side.
				if ((await this.blockedBetween(me.id, conv.participants.filter(p => p !== me.id))).size > 0) throw forbidden("You cannot message this user");
				const updated = (await this.writeConversation(conv._id, () => this.stores.conversations.updateById(conv._id, { $set: { status: "accepted", updated_at: new Date() } }))) as ConversationDoc;
				await this.forgetMeta(ctx, [conv._id]);
				// The two are now each other's private-chat partners (presence without subscribing).
				await this.forgetPartners(ctx, conv.participants);
				const live = await this.liveMembers(updated);
				if (conv.initiator_id && live.includes(conv.initiator_id)) {
					await this.push(ctx, [{ rooms: [userRoom(conv.initiator_id)], event: "request:accepted", payload: { conversationId: conv._id, acceptedBy: me.id } }]);
				}
				await this.pushConversation(ctx, updated, "conversation:updated", updated.participants);
				return this.presentFor(updated, me.id);
			},
		},

		decline: {
			rest: "POST /conversations/:conversationId/decline",
			socket: { namespace: "/chat", event: "conversation:decline" },
			member: "conversationId",
			openapi: {
				operationId: "declineConversation",
				tag: "Conversations",
				summary: "Decline a message request",
				description:
					"The addressee of a pending private chat declines it (`status` becomes `declined`, after which nobody can send); the initiator gets `request:declined`. " +
					"Declining one that is already declined returns it unchanged.",
				params: { conversationId: CONVERSATION_ID_TEXT },
				responses: {
					200: ok("The conversation.", schema("Conversation")),
					403: errorResponse("`FORBIDDEN`: a group, or the caller is the request's initiator.", {
						notAddressee: errorExample(403, "FORBIDDEN", "Only the addressee of a message request can decline it"),
					}),
					404: ref("responses", "ConversationNotFound"),
					409: errorResponse("`CONFLICT`: the conversation was already accepted.", {
						accepted: errorExample(409, "CONFLICT", "This conversation was already accepted"),
					}),
					...errors(400, 401, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
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
			socket: { namespace: "/chat", event: "conversation:add-member" },
			member: "conversationId",
			openapi: {
				tag: "Conversations",
				summary:
					"Add a user to a group (its admin or a moderator): the user gets `conversation:invited` and a `group_invite` notification, " +
					"the other members `members:added` and `conversation:updated`, and the group a `member_added` system message; adding a member again changes nothing.",
				params: { conversationId: CONVERSATION_ID_TEXT, userId: "The user to add." },
				ack: schema("Conversation"),
			},
			params: { $$strict: "remove", conversationId: idRule, userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
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
			socket: { namespace: "/chat", event: "conversation:remove-member" },
			member: "conversationId",
			openapi: {
				tag: "Conversations",
				summary:
					"Remove a member from a group, or leave it (`userId` the caller's own): the admin removes anyone, a moderator plain members; " +
					"the admin's leaving hands the group to the longest-standing moderator (else member), and the last member's leaving deletes it. " +
					"Everyone gets `members:removed` and `conversation:updated`, and the group a `member_removed` or `member_left` system message.",
				params: { conversationId: CONVERSATION_ID_TEXT, userId: "The member to remove: the caller's own id to leave." },
				ack: schema("Conversation"),
			},
			params: { $$strict: "remove", conversationId: idRule, userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
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
			socket: { namespace: "/chat", event: "conversation:promote-moderator" },
			member: "conversationId",
			openapi: {
				tag: "Conversations",
				summary:
					"Make a member of a group a moderator (the group admin only): every member gets `conversation:moderator-updated` and the group a `moderator_promoted` system message.",
				params: { conversationId: CONVERSATION_ID_TEXT, userId: "The member to promote." },
				ack: schema("Conversation"),
			},
			params: { $$strict: "remove", conversationId: idRule, userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
				if (conv.type !== "group" || conv.admin_id !== me.id) throw forbidden("Only the group admin promotes moderators");
				const target = ctx.params.userId;
				if (!conv.participants.includes(target)) throw notFound("Member");
				if (target === conv.admin_id) throw badRequest("The admin is already above moderators");
				if (conv.moderator_ids.includes(target)) return this.presentFor(conv, me.id);
				return this.changeModerator(ctx, conv, target, true, me.id);
			},
		},

		demoteModerator: {
			socket: { namespace: "/chat", event: "conversation:demote-moderator" },
			member: "conversationId",
			openapi: {
				tag: "Conversations",
				summary:
					"Make a moderator of a group a plain member again (the group admin only): every member gets `conversation:moderator-updated` and the group a `moderator_demoted` system message.",
				params: { conversationId: CONVERSATION_ID_TEXT, userId: "The moderator to demote." },
				ack: schema("Conversation"),
			},
			params: { $$strict: "remove", conversationId: idRule, userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; userId: number }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
				if (conv.type !== "group" || conv.admin_id !== me.id) throw forbidden("Only the group admin demotes moderators");
				const target = ctx.params.userId;
				if (!conv.moderator_ids.includes(target)) return this.presentFor(conv, me.id);
				return this.changeModerator(ctx, conv, target, false, me.id);
			},
		},

		remove: {
			rest: "DELETE /conversations/:conversationId",
			socket: { namespace: "/chat", event: "conversation:delete", ack: "none" },
			member: "conversationId",
			openapi: {
				operationId: "deleteConversation",
				tag: "Conversations",
				summary: "Delete a group (its admin) or hide a private chat (for the caller)",
				description:
					"A group: only its admin may delete it; it is gone with its messages for everyone, and every member gets `conversation:deleted`. " +
					"A private chat: it is hidden for the caller only (the caller's devices get `conversation:deleted`) and comes back with the next message.",
				params: { conversationId: CONVERSATION_ID_TEXT },
				responses: {
					204: noContent("Deleted (group) or hidden (private chat)."),
					403: errorResponse("`FORBIDDEN`: a group, and the caller is not its admin.", {
						notAdmin: errorExample(403, "FORBIDDEN", "Only the group admin deletes the group"),
					}),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
				if (conv.type === "group") {
					if (conv.admin_id !== me.id) throw forbidden("Only the group admin deletes the group");
					await this.deleteConversation(ctx, conv);
				} else {
					// A private chat is hidden for me only; a new message brings it back.
					await this.updateMemberships(conv._id, { key: membershipKey(conv._id, me.id) }, { $set: { hidden: true } });
					await this.forgetMeta(ctx, [conv._id]);
					await this.push(ctx, [{ rooms: [userRoom(me.id)], event: "conversation:deleted", payload: { conversationId: conv._id } }]);
				}
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		markRead: {
			rest: "POST /conversations/:conversationId/read",
			socket: { namespace: "/chat", event: "conversation:mark-read" },
			member: "conversationId",
			openapi: {
				operationId: "markConversationRead",
				tag: "Conversations",
				summary: "Mark everything in a conversation read",
				description: "Moves the caller's read position to the newest message. If that message is someone else's, the members get `message:read` (and `message:status`).",
				params: { conversationId: CONVERSATION_ID_TEXT },
				responses: {
					200: ok("Nothing is unread now.", schema("MarkReadResult")),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
				const moved = await this.updateMemberships(
					conv._id,
					{ key: membershipKey(conv._id, me.id), last_read_seq: { $lt: conv.last_seq } },
					{ $set: { last_read_seq: conv.last_seq }, ...readMentionsUpTo(conv.last_seq) },
				);
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
			rest: "POST /conversations/:conversationId/mute",
			member: "conversationId",
			openapi: {
				operationId: "muteConversation",
				tag: "Conversations",
				summary: "Mute or unmute a conversation (for the caller)",
				description: "While muted, the caller gets no notifications for its messages. `muteUntil` ends the mute by itself.",
				params: {
					conversationId: CONVERSATION_ID_TEXT,
					muteUntil: "With `muted: true`: when the mute ends by itself. Left out or `null`: until unmuted.",
				},
				responses: {
					204: noContent("Saved."),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 413, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule, muted: { type: "boolean", convert: true }, muteUntil: { type: "date", convert: true, optional: true, nullable: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; muted: boolean; muteUntil?: Date | null }>) {
				const until = ctx.params.muted && ctx.params.muteUntil ? ctx.params.muteUntil : null;
				return this.setMySettings(ctx, { muted: ctx.params.muted, mute_until: until });
			},
		},

		pin: {
			rest: "POST /conversations/:conversationId/pin",
			member: "conversationId",
			openapi: {
				operationId: "pinConversation",
				tag: "Conversations",
				summary: "Pin or unpin a conversation (for the caller)",
				params: { conversationId: CONVERSATION_ID_TEXT },
				responses: {
					204: noContent("Saved."),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 413, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule, pinned: { type: "boolean", convert: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; pinned: boolean }>) {
				return this.setMySettings(ctx, { pinned: ctx.params.pinned });
			},
		},

		hide: {
			rest: "POST /conversations/:conversationId/hide",
			member: "conversationId",
			openapi: {
				operationId: "hideConversation",
				tag: "Conversations",
				summary: "Hide or unhide a conversation (for the caller)",
				description: "A hidden conversation is left out of GET /conversations until a new message arrives in it.",
				params: { conversationId: CONVERSATION_ID_TEXT, hidden: "A hidden conversation comes back with its next message." },
				responses: {
					204: noContent("Saved."),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 413, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule, hidden: { type: "boolean", convert: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; hidden: boolean }>) {
				return this.setMySettings(ctx, { hidden: ctx.params.hidden });
			},
		},

		nicknames: {
			rest: "GET /conversations/:conversationId/nicknames",
			member: "conversationId",
			openapi: {
				operationId: "listNicknames",
				tag: "Conversations",
				summary: "The nicknames set in a conversation",
				params: { conversationId: CONVERSATION_ID_TEXT },
				responses: {
					200: ok("The nicknames.", arrayOf(schema("Nickname"))),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule },
			handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const { conv } = memberOf<MemberDocs>(ctx);
				return Object.entries(conv.nicknames ?? {}).map(([id, nickname]) => ({ target_user_id: Number(id), targetUserId: Number(id), nickname }));
			},
		},

		setNickname: {
			rest: "POST /conversations/:conversationId/nicknames",
			member: "conversationId",
			openapi: {
				operationId: "setNickname",
				tag: "Conversations",
				summary: "Set or remove a member's nickname",
				description: "Any member may set the nickname of any member (itself included); every member sees it and gets `conversation:updated`.",
				params: {
					conversationId: CONVERSATION_ID_TEXT,
					targetUserId: "A member of the conversation (an integer or a numeric string).",
					nickname: "Trimmed; `null` or an empty string removes the nickname.",
				},
				responses: {
					200: ok("All the nicknames of the conversation, after the change.", arrayOf(schema("Nickname"))),
					// Not in the hand-written document before the declarations: the handler has always answered it.
					403: errorResponse("`FORBIDDEN`: a block between the caller and the member named, either way (in a private chat: any block between the two).", {
						blocked: errorExample(403, "FORBIDDEN", "You cannot set a nickname for this user"),
					}),
					404: errorResponse("`NOT_FOUND`: no such conversation or the caller is not a member (the same answer), or `targetUserId` is not a member.", {
						conversation: errorExample(404, "NOT_FOUND", "Conversation not found"),
						member: errorExample(404, "NOT_FOUND", "Member not found"),
					}),
					...errors(400, 401, 413, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule, targetUserId: userIdRule, nickname: { type: "string", trim: true, max: 50, nullable: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; targetUserId: number; nickname: string | null }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
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
			rest: "DELETE /conversations/:conversationId/messages",
			member: "conversationId",
			openapi: {
				operationId: "clearHistory",
				tag: "Messages",
				summary: "Clear a conversation's history for the caller",
				description: "The messages sent so far are no longer shown to the caller (nor found by search); the other members still see them.",
				params: { conversationId: CONVERSATION_ID_TEXT },
				responses: {
					204: noContent("Cleared for the caller."),
					404: ref("responses", "ConversationNotFound"),
					...errors(400, 401, 429, 503),
				},
			},
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				const me = userOf(ctx);
				const { conv } = memberOf<MemberDocs>(ctx);
				await this.updateMemberships(
					conv._id,
					{ key: membershipKey(conv._id, me.id) },
					{ $set: { cleared_seq: conv.last_seq, last_read_seq: conv.last_seq }, ...readMentionsUpTo(conv.last_seq) },
				);
				await this.forgetMeta(ctx, [conv._id]);
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		join: {
			socket: { namespace: "/chat", event: "conversation:join", ack: "none", room: "join" },
			// The member check is the whole of it: only a member's socket joins the room.
			member: "conversationId",
			openapi: {
				tag: "Conversations",
				summary: "Join a conversation's room on this socket (members only): the socket then gets the conversation's `typing` events.",
				params: { conversationId: CONVERSATION_ID_TEXT },
			},
			params: { $$strict: "remove", conversationId: idRule },
			handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				return { room: conversationRoom(ctx.params.conversationId) };
			},
		},

		leave: {
			socket: { namespace: "/chat", event: "conversation:leave", ack: "none", room: "leave" },
			openapi: {
				tag: "Conversations",
				summary: "Leave a conversation's room on this socket: it stops getting the conversation's `typing` events.",
				params: { conversationId: "The conversation's id." },
			},
			params: { $$strict: "remove", conversationId: idRule },
			handler(this: ConvThis, ctx: Ctx<{ conversationId: string }>) {
				return { room: conversationRoom(ctx.params.conversationId) };
			},
		},

		typing: {
			socket: { namespace: "/chat", event: "typing", ack: "none" },
			openapi: {
				tag: "Conversations",
				summary:
					"Say that the caller is typing in a conversation, or stopped: the sockets that joined its room (`conversation:join`) get `typing`, " +
					"except the caller's own and anyone with a block with the caller either way; the same state again within a second is not passed on.",
				params: { conversationId: CONVERSATION_ID_TEXT, isTyping: "`true`: typing; `false`: stopped." },
			},
			params: { $$strict: "remove", conversationId: idRule, isTyping: { type: "boolean", convert: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; isTyping: boolean }>) {
				const me = userOf(ctx);
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
			socket: { namespace: "/chat", event: "user:block", ack: "none" },
			openapi: {
				tag: "Conversations",
				summary:
					"Block a user: the two can no longer start a private chat or message each other there, be put in a group together by each other, " +
					"or see each other's typing and read receipts; the caller's devices get `user:blocked`. Blocking again changes nothing.",
				params: { targetUserId: "The user to block." },
			},
			params: { $$strict: "remove", targetUserId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ targetUserId: number }>) {
				const me = userOf(ctx);
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
			socket: { namespace: "/chat", event: "user:unblock", ack: "none" },
			openapi: {
				tag: "Conversations",
				summary: "Lift the caller's block of a user; the caller's devices get `user:unblocked`. Unblocking a user not blocked changes nothing.",
				params: { targetUserId: "The user to unblock." },
			},
			params: { $$strict: "remove", targetUserId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ targetUserId: number }>) {
				const me = userOf(ctx);
				await this.stores.blocks.removeMany({ key: `${me.id}:${ctx.params.targetUserId}` });
				await this.forgetMeta(ctx, "all");
				await this.push(ctx, [{ rooms: [userRoom(me.id)], event: "user:unblocked", payload: { targetUserId: ctx.params.targetUserId } }]);
				return null;
			},
		},

		blocked: {
			rest: "GET /blocks",
			openapi: {
				operationId: "listBlocks",
				tag: "Conversations",
				summary: "The users the caller blocked",
				description: "Newest block first. Block and unblock over the `/chat` socket (`user:block`, `user:unblock`).",
				responses: {
					200: ok("The caller's blocks.", arrayOf(schema("Block"))),
					...errors(401, 429, 503),
				},
			},
			async handler(this: ConvThis, ctx: Ctx) {
				const me = userOf(ctx);
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

		/**
		 * A message was stored: move the conversation's head, unhide it, advance the sender's read
		 * position; and with `mentions` (what the message's content names), note its seq on each
		 * mentioned member's membership (unread_mentions). Without mentions nothing more is written.
		 */
		recordMessage: {
			visibility: "public",
			params: {
				conversationId: idRule,
				seq: { type: "number", integer: true, positive: true },
				senderId: userIdRule,
				lastMessage: "object",
				mentions: { ...mentionsRule, optional: true },
			},
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; seq: number; senderId: number; lastMessage: Record<string, unknown>; mentions?: number[] }>) {
				const { conversationId, seq, senderId, lastMessage, mentions } = ctx.params;
				const now = new Date();
				// One write: the head, and the sender's own position (sent_seq: what it sent it has read),
				// a no-op when the head is already further along.
				const head = this.writeConversation(conversationId, () =>
					this.stores.conversations.updateMany(
						{ _id: conversationId, last_seq: { $lt: seq } },
						{ $set: { last_seq: seq, last_message: lastMessage, last_activity_at: now, updated_at: now, [`sent_seq.${senderId}`]: seq } },
					),
				);
				// Cached: no store round trip for a conversation already seen.
				const meta = this.metaOf(conversationId);
				// A new message brings a conversation back for whoever hid it: a second write only then.
				const unhide = async () => {
					const known = await meta;
					if (known && !known.members.some(m => m.hidden)) return;
					const unhidden = await this.updateMemberships(conversationId, { conversation_id: conversationId, hidden: true }, { $set: { hidden: false } });
					if (unhidden > 0) await this.forgetMeta(ctx, [conversationId]);
				};
				// The mentioned members, in one write.
				const mention = async () => {
					if (!mentions?.length) return;
					const known = await meta;
					const keys = known ? this.mentionKeys(known, senderId, mentions) : [];
					// $addToSet: the same message recorded twice counts once.
					if (keys.length > 0) await this.updateMemberships(conversationId, { key: { $in: keys } }, { $addToSet: { mention_seqs: seq } });
				};
				// All awaited together: a failure of any is the caller's, never an unhandled rejection.
				await Promise.all([head, unhide(), mention()]);
				return true;
			},
		},

		/**
		 * A message's mentions changed (an edit parsed them again; a deletion leaves none): the
		 * members it no longer names lose it from their unread mentions, those it names now gain it
		 * while it is unread for them. Under the same rules as recordMessage.
		 */
		setMentions: {
			visibility: "public",
			params: {
				conversationId: idRule,
				seq: { type: "number", integer: true, positive: true },
				senderId: userIdRule,
				mentions: mentionsRule,
			},
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; seq: number; senderId: number; mentions: number[] }>) {
				const { conversationId, seq, senderId, mentions } = ctx.params;
				const meta = await this.metaOf(conversationId);
				if (!meta) return false;
				const keys = this.mentionKeys(meta, senderId, mentions);
				// A $pull of one value, which every store does (FerretDB too); only where the seq is.
				await this.updateMemberships(conversationId, { conversation_id: conversationId, mention_seqs: seq, key: { $nin: keys } }, { $pull: { mention_seqs: seq } });
				if (keys.length > 0) await this.updateMemberships(conversationId, { key: { $in: keys }, last_read_seq: { $lt: seq } }, { $addToSet: { mention_seqs: seq } });
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
				await this.updateMemberships(conversationId, { key: membershipKey(conversationId, userId), last_read_seq: { $lt: seq } }, { $set: { last_read_seq: seq }, ...readMentionsUpTo(seq) });
				return true;
			},
		},

		/**
		 * Who gets a notification for a new message: not the sender, not who blocked it, not who
		 * muted the conversation unless the message mentions it. For the outbox sweep; messages.send
		 * has it from authorizeSend.
		 */
		notificationTargets: {
			visibility: "public",
			params: { conversationId: idRule, senderId: userIdRule, mentions: { ...mentionsRule, optional: true } },
			async handler(this: ConvThis, ctx: Ctx<{ conversationId: string; senderId: number; mentions?: number[] }>): Promise<ActionResult<"conversations.notificationTargets">> {
				const { conversationId, senderId, mentions } = ctx.params;
				const meta = await this.metaOf(conversationId);
				// Mentioned members get a `mention` instead (muted or not); one who is not a participant gets nothing.
				return meta ? notificationTargetsOf(meta.conv, senderId, sendingSkips(meta, senderId), mentions) : null;
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

		/**
		 * The users `userId` shares an accepted private chat with, who still have an account (for
		 * presence: they see each other's without subscribing). Blocks are not applied here: the
		 * caller decides what a block hides (blockRelations). Cached per user; accepting a private
		 * chat and deleting an account, the only changes to it, forget it on every node.
		 */
		privatePartners: {
			visibility: "public",
			params: { userId: userIdRule },
			async handler(this: ConvThis, ctx: Ctx<{ userId: number }>): Promise<ActionResult<"conversations.privatePartners">> {
				const userId = ctx.params.userId;
				return (await this.partnersCache.get(String(userId), () => this.loadPartners(userId))) ?? [];
			},
		},

		/** Another conversations node changed these users' private-chat partners: this node's cached lists go. */
		forgetPartners: {
			visibility: "public",
			params: { userIds: { type: "array", max: 10_000, items: userIdRule } },
			async handler(this: ConvThis, ctx: Ctx<{ userIds: number[] }>) {
				await this.partnersCache.forget(ctx.params.userIds.map(String));
				return true;
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
			// After the memberships went: its private-chat partners no longer have it among theirs (nor it any).
			await this.forgetPartners(ctx as Ctx<unknown>, [userId, ...convs.filter(c => c.type === "private").flatMap(c => c.participants.filter(p => p !== userId))]);
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

		/** The caller's own settings of the conversation its action checked it belongs to (`member`); answers 204. */
		async setMySettings(this: ConvThis, ctx: Ctx<unknown>, set: Partial<MembershipDoc>) {
			const me = userOf(ctx);
			const { conv } = memberOf<MemberDocs>(ctx);
			await this.updateMemberships(conv._id, { key: membershipKey(conv._id, me.id) }, { $set: set });
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

		/**
		 * privatePartners from the store: the user's accepted private chats (the participants index),
		 * where both sides still have their membership (a deleted account keeps its place in the
		 * participants but loses the membership), found by the unique key in one query.
		 */
		async loadPartners(this: ConvThis, userId: number) {
			const convs = (await this.stores.conversations.find({ participants: userId, type: "private", status: "accepted" })) as ConversationDoc[];
			if (convs.length === 0) return [];
			const keys = convs.flatMap(c => c.participants.map(p => membershipKey(c._id, p)));
			const members = new Set(((await this.stores.memberships.find({ key: { $in: keys } })) as MembershipDoc[]).map(m => m.key));
			const partners = new Set<number>();
			for (const c of convs) {
				if (!members.has(membershipKey(c._id, userId))) continue;
				for (const p of c.participants) if (p !== userId && members.has(membershipKey(c._id, p))) partners.add(p);
			}
			return [...partners].sort((a, b) => a - b);
		},

		/**
		 * The memberships a message of `senderId` mentioning `mentions` counts for: members only, never
		 * the sender, nor a member who blocked the sender (it never gets the message live, nor its
		 * mention). From the cached metadata: no store round trip.
		 */
		mentionKeys(this: ConvThis, meta: ConversationMeta, senderId: number, mentions: number[]) {
			const members = new Set(meta.members.map(m => m.user_id));
			const { blockedBy } = sendingSkips(meta, senderId);
			return [...new Set(mentions)].filter(id => id !== senderId && members.has(id) && !blockedBy.includes(id)).map(id => membershipKey(meta.conv._id, id));
		},

		/** These users' private-chat partners changed: forgotten here and on every other conversations node. */
		async forgetPartners(this: ConvThis, ctx: Ctx<unknown> | null, userIds: number[]) {
			const ids = [...new Set(userIds)];
			if (ids.length === 0) return;
			await this.partnersCache.forget(ids.map(String));
			await forgetOnOtherNodes(this.broker, "conversations.forgetPartners", { userIds: ids }, FORGET_TIMEOUT_MS, ctx?.requestID);
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
					// Always an array, so that reading can $pull from it in NeDB (which refuses a missing field).
					mention_seqs: [],
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
		async pushConversation(this: ConvThis, ctx: Ctx<unknown>, conv: ConversationDoc, event: ConversationEventName, to: number[]) {
			const memberships = new Map((await this.membershipsOf(conv._id)).map(m => [m.user_id, m]));
			// Only members: a deleted account's token, still valid for a while, hears nothing.
			const items: PushItem[] = to.filter(uid => memberships.has(uid)).map(uid => ({
				rooms: [userRoom(uid)],
				event,
				payload: { conversationId: conv._id, conversation: presentConversation(conv, memberships.get(uid) ?? null) },
			}));
			await this.push(ctx, items);
		},

		async pushToParticipants<E extends keyof ChatServerPayloads>(
			this: ConvThis,
			ctx: Ctx<unknown>,
			participants: number[],
			event: E,
			payload: ChatServerPayloads[E],
			aliases: EventWithPayload<ChatServerPayloads[E]>[] = [],
		) {
			const rooms = participants.map(userRoom);
			// An alias event carries the same payload under another name (the contract keeps both).
			await this.push(ctx, [event, ...aliases].map(e => ({ rooms, event: e, payload }) as PushItem));
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
			await ctx.call("files.verifyImage", { ref: given, ownerId: userOf(ctx).id });
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

		/**
		 * An update of a conversation's memberships; those of one conversation run one at a time in
		 * this process, likewise: a mention noted while the member marks read would otherwise lose one of the two.
		 */
		updateMemberships(this: ConvThis, conversationId: string, query: Record<string, unknown>, update: Record<string, unknown>): Promise<number> {
			return this.memberWrites.run(conversationId, () => this.stores.memberships.updateMany(query, update));
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

	async started(this: ConvThis) {
		// Memberships stored before mentions get their (empty) list once: NeDB refuses to $pull from a missing field.
		await this.stores.memberships.updateMany({ mention_seqs: { $exists: false } }, { $set: { mention_seqs: [] } });
	},

	created(this: ConvThis) {
		this.typingState = new Map();
		this.metaCache = new ReadCache(this.broker, "conversations.meta", META_TTL_SECONDS);
		this.partnersCache = new ReadCache(this.broker, "conversations.partners", PARTNERS_TTL_SECONDS);
		this.convWrites = new SerialWork();
		this.memberWrites = new SerialWork();
	},
};

/**
 * The update that goes with moving a member's read position to `seq`: the mentions it has now
 * read leave its mention_seqs, which so hold only unread ones (unread_mentions counts by position
 * anyway: a store that ignores this $pull, as FerretDB 1.x does, shows the same counts).
 */
function readMentionsUpTo(seq: number) {
	return { $pull: { mention_seqs: { $lte: seq } } };
}

function appNotFoundUsers(ids: number[]) {
	const err = notFound("User");
	err.data = ids.map(id => ({ field: "participants", type: "notFound", message: `No user ${id}` }));
	return err;
}

export default ConversationsService;
