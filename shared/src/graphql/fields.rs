//! One declaration per field: [`graphql_object!`] turns a list of fields into both the GraphQL
//! resolvers (`#[Object]`, from which the schema and its docs come) and the direct-JSON render arms
//! ([`super::RenderFields`], see [`super::render`]), and optionally the scalar shortcut
//! ([`super::ScalarFields`]). Written twice, the two could drift apart — a field answered one way
//! by the engine and another by the shortcut, or a guard the shortcut never runs. Declared once,
//! they cannot.
//!
//! A field is `fn name(&self, arg: Type = default, …) -> OutputType => kind(value);`:
//! - `value` is computed once per answer and used by both paths;
//! - `kind` says how it is written: `str`, `opt_str`, `int`, `opt_int`, `float`, `strs` (a list
//!   of strings), `object` (a [`super::RenderFields`] value), `opt_object`, `objects` (an
//!   iterator of them), `try_opt_object` (a `Result<Option<_>, _>`: an error is the field's);
//! - the resolver returns `OutputType` converted from `value` by [`FromField`];
//! - arguments take literal defaults, the same for both paths;
//! - `#[guard = expr]` guards a field on **both** paths: the resolver gets it as its
//!   `#[graphql(guard)]`, and the render arm checks it before writing (a guard that cannot decide
//!   without waiting denies), so the shortcut can never answer what the engine would refuse.

use std::borrow::Cow;

/// How a field's value becomes its resolver's output type.
pub trait FromField<V> {
    /// The output for `value`.
    fn from_field(value: V) -> Self;
}

impl<T> FromField<T> for T {
    fn from_field(value: T) -> Self {
        value
    }
}

impl<T> FromField<T> for super::Inline<T> {
    fn from_field(value: T) -> Self {
        Self(value)
    }
}

impl<T> FromField<Option<T>> for Option<super::Inline<T>> {
    fn from_field(value: Option<T>) -> Self {
        value.map(super::Inline)
    }
}

impl<T> FromField<Option<T>> for Option<super::Scalars<T>> {
    fn from_field(value: Option<T>) -> Self {
        value.map(super::Scalars)
    }
}

impl<T, I: Iterator<Item = T>> FromField<I> for super::InlineList<super::Scalars<T>> {
    fn from_field(value: I) -> Self {
        Self(value.map(super::Scalars).collect())
    }
}

impl<'a> FromField<&'a [String]> for super::InlineList<&'a str> {
    fn from_field(value: &'a [String]) -> Self {
        Self(value.iter().map(String::as_str).collect())
    }
}

impl<'a> FromField<&'a str> for async_graphql::ID {
    fn from_field(value: &'a str) -> Self {
        Self(value.to_owned())
    }
}

impl FromField<Cow<'_, str>> for String {
    fn from_field(value: Cow<'_, str>) -> Self {
        value.into_owned()
    }
}

/// Whether the GraphQL field `graphql` (camelCase, as the engine names it) is the Rust field
/// `rust` (snake_case), compared without allocating.
pub fn is_field(rust: &str, graphql: &str) -> bool {
    let mut g = graphql.bytes();
    let mut r = rust.bytes();
    while let Some(b) = r.next() {
        let want = if b == b'_' {
            match r.next() {
                Some(next) => next.to_ascii_uppercase(),
                None => return false,
            }
        } else {
            b
        };
        if g.next() != Some(want) {
            return false;
        }
    }
    g.next().is_none()
}

/// The GraphQL name of an argument (`max_width` → `maxWidth`).
pub fn arg_name(rust: &'static str) -> Cow<'static, str> {
    if !rust.contains('_') {
        return Cow::Borrowed(rust);
    }
    let mut out = String::with_capacity(rust.len());
    let mut upper = false;
    for c in rust.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Declares an object's fields once (see the module docs).
///
/// ```ignore
/// graphql_object! {
///     /// Docs of the type (its SDL description).
///     #[Object(name = "TitleBasics")]
///     impl[] TitleBasics, self {
///         /// Display name.
///         fn name() -> &str => str(&self.0.name);
///     }
/// }
/// ```
#[macro_export]
macro_rules! graphql_object {
    // `#[scalars]`: also the scalar shortcut, for objects made only of scalar fields.
    (
        $(#[doc = $tydoc:expr])*
        #[Object $($objargs:tt)*]
        #[scalars]
        impl [$($generics:tt)*] $ty:ty, $this:ident {
            $(
                $(#[doc = $doc:expr])*
                fn $name:ident () -> $out:ty => $kind:ident ( $($value:tt)* );
            )*
        }
    ) => {
        $crate::graphql_object! {
            $(#[doc = $tydoc])*
            #[Object $($objargs)*]
            impl [$($generics)*] $ty, $this {
                $(
                    $(#[doc = $doc])*
                    fn $name() -> $out => $kind($($value)*);
                )*
            }
        }

        impl $($generics)* $crate::graphql::ScalarFields for $ty {
            fn scalar_field(&$this, name: &str) -> Option<async_graphql::Value> {
                $(
                    if $crate::graphql::fields::is_field(stringify!($name), name) {
                        return Some($crate::__graphql_scalar!($kind, $($value)*));
                    }
                )*
                None
            }
        }
    };
    (
        $(#[doc = $tydoc:expr])*
        #[Object $($objargs:tt)*]
        impl [$($generics:tt)*] $ty:ty, $this:ident {
            $(
                $(#[doc = $doc:expr])*
                $(#[guard = $guard:expr])?
                fn $name:ident ($($arg:ident : $argty:ty = $default:literal),* $(,)?) -> $out:ty
                    => $kind:ident ( $($value:tt)* );
            )*
        }
    ) => {
        $(#[doc = $tydoc])*
        #[async_graphql::Object $($objargs)*]
        impl $($generics)* $ty {
            $(
                $(#[doc = $doc])*
                $(#[graphql(guard = $guard)])?
                async fn $name(&$this $(, #[graphql(default = $default)] $arg: $argty)*) -> $out {
                    $crate::__graphql_resolve!($kind, $($value)*)
                }
            )*
        }

        impl $($generics)* $crate::graphql::RenderFields for $ty {
            fn render_field(
                &$this,
                f: &mut $crate::graphql::FieldOut<'_, '_>,
            ) -> async_graphql::ServerResult<bool> {
                $(
                    if $crate::graphql::fields::is_field(stringify!($name), f.name()) {
                        $( f.check_guard(&$guard)?; )?
                        $(
                            let $arg: $argty =
                                f.arg(&$crate::graphql::fields::arg_name(stringify!($arg)), || $default)?;
                        )*
                        $crate::__graphql_render!(f, $kind, $($value)*);
                        return Ok(true);
                    }
                )*
                Ok(false)
            }
        }
    };
}

/// The resolver body of one field kind (an implementation detail of [`graphql_object!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __graphql_resolve {
    (try_opt_object, $($value:tt)*) => {
        Ok($crate::graphql::fields::FromField::from_field(($($value)*)?))
    };
    ($kind:ident, $($value:tt)*) => {
        $crate::graphql::fields::FromField::from_field($($value)*)
    };
}

/// The render arm of one field kind (an implementation detail of [`graphql_object!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __graphql_render {
    ($f:ident, str, $($value:tt)*) => { $f.str(&($($value)*)) };
    ($f:ident, opt_str, $($value:tt)*) => { $f.opt_str($($value)*) };
    ($f:ident, int, $($value:tt)*) => { $f.int($($value)*) };
    ($f:ident, opt_int, $($value:tt)*) => { $f.opt_int($($value)*) };
    ($f:ident, float, $($value:tt)*) => { $f.float($($value)*) };
    ($f:ident, strs, $($value:tt)*) => { $f.strs($($value)*) };
    ($f:ident, object, $($value:tt)*) => { $f.object(&($($value)*)) };
    ($f:ident, opt_object, $($value:tt)*) => { $f.opt_object(($($value)*).as_ref()) };
    ($f:ident, objects, $($value:tt)*) => { $f.objects($($value)*) };
    ($f:ident, try_opt_object, $($value:tt)*) => {{
        let value = ($($value)*).map_err(|e| $f.error(e))?;
        $f.opt_object(value.as_ref())
    }};
}

/// The value of one scalar field kind (an implementation detail of [`graphql_object!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __graphql_scalar {
    (str, $($value:tt)*) => { async_graphql::Value::String(($($value)*).to_owned()) };
    (int, $($value:tt)*) => { async_graphql::Value::from($($value)*) };
    (float, $($value:tt)*) => { async_graphql::Value::from($($value)*) };
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use async_graphql::{EmptyMutation, EmptySubscription, Guard, Object, Request, Schema};
    use serde_json::{Value as Json, json};

    use super::{arg_name, is_field};
    use crate::graphql::{RenderJson, Rendered, response_json};

    /// Lets a request through only when it carries [`Admin`].
    struct AdminOnly;
    struct Admin;

    impl Guard for AdminOnly {
        async fn check(&self, ctx: &async_graphql::Context<'_>) -> async_graphql::Result<()> {
            match ctx.data_opt::<Admin>() {
                Some(_) => Ok(()),
                None => Err(crate::error::ErrorCode::Forbidden.error("admins only")),
            }
        }
    }

    struct Account {
        name: String,
        secret: String,
    }

    crate::graphql_object! {
        /// An account with a guarded field.
        #[Object]
        impl[] Account, self {
            /// Anyone may see the name.
            fn name() -> &str => str(self.name.as_str());
            /// Only admins may see the secret.
            #[guard = AdminOnly]
            fn secret() -> &str => str(self.secret.as_str());
        }
    }

    struct Query;

    #[Object]
    impl Query {
        async fn account(&self) -> Rendered<Account> {
            Rendered(Account {
                name: "ana".into(),
                secret: "s3cret".into(),
            })
        }
    }

    async fn run(render: bool, admin: bool) -> Json {
        let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
        let mut request = Request::new("{ account { name secret } }");
        if render {
            request = request.data(RenderJson::default());
        }
        if admin {
            request = request.data(Admin);
        }
        serde_json::from_slice(&response_json(&schema.execute(request).await).unwrap()).unwrap()
    }

    /// A guard declared once denies on the engine's path and on the direct-JSON path alike, and
    /// lets the same requests through on both.
    #[tokio::test]
    async fn a_guard_denies_on_both_paths() {
        for render in [false, true] {
            let denied = run(render, false).await;
            assert_eq!(
                denied["data"]["account"]["name"], "ana",
                "render {render}: {denied}"
            );
            assert!(
                denied["data"]["account"]
                    .get("secret")
                    .is_none_or(Json::is_null),
                "render {render}: {denied}"
            );
            assert!(
                !denied.to_string().contains("s3cret"),
                "render {render}: {denied}"
            );
            assert_eq!(
                denied["errors"][0]["extensions"]["code"], "FORBIDDEN",
                "render {render}: {denied}"
            );
            assert_eq!(denied["errors"][0]["path"], json!(["account", "secret"]));
            let allowed = run(render, true).await;
            assert_eq!(
                allowed["data"]["account"]["secret"], "s3cret",
                "render {render}: {allowed}"
            );
        }
    }

    #[test]
    fn rust_and_graphql_names_compare_by_case_rule() {
        assert!(is_field("runtime_minutes", "runtimeMinutes"));
        assert!(is_field("id", "id"));
        assert!(!is_field("runtime_minutes", "runtime_minutes"));
        assert!(!is_field("runtime_minutes", "runtimeMinute"));
        assert!(!is_field("runtime_minutes", "runtimeMinutesX"));
        assert!(!is_field("name", "names"));
        assert_eq!(arg_name("width"), "width");
        assert_eq!(arg_name("max_width"), "maxWidth");
    }
}
