from aiogram import F, Router

from bot.telegram.routers import admin, errors, fallback, language, start, subscriptions, tracking


def build_router() -> Router:
    """Feature routers in matching order: commands first, free text and the rest last.

    Built anew for every Dispatcher: an aiogram router can belong to one parent only.
    """
    root = Router(name="root")
    # Subscriptions belong to a person's private chat; groups are not served.
    root.message.filter(F.chat.type == "private")
    root.callback_query.filter(F.message.chat.type == "private")
    root.include_routers(
        start.create_router(),
        admin.create_router(),
        language.create_router(),
        subscriptions.create_router(),
        tracking.create_router(),
        fallback.create_router(),
        errors.create_router(),
    )
    return root
