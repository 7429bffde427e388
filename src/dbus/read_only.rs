//! `Set` on a read-only property answers `org.freedesktop.DBus.Error.PropertyReadOnly`, as the
//! D-Bus specification says. zbus's `#[interface]` answers `UnknownProperty` for any property
//! without a setter, which tells a caller the name is wrong when only the access is.

use std::collections::HashMap;
use std::fmt::Write;

use zbus::message::{Header, Message};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult, Interface, SignalEmitter};
use zbus::zvariant::{OwnedVariant, Variant};
use zbus::{BoxDBusError, Connection, ObjectServer};

/// Serves `I` unchanged, except that setting one of its read-only properties is refused with
/// `PropertyReadOnly`. The read-only names are taken from `I`'s own introspection.
pub struct ReadOnlyProps<I> {
    inner: I,
    read_only: Vec<String>,
}

impl<I: Interface> ReadOnlyProps<I> {
    pub fn new(inner: I) -> Self {
        let mut xml = String::new();
        inner.introspect_to_writer(&mut xml, 0);
        let read_only = xml
            .lines()
            .filter(|l| l.contains("<property ") && l.contains("access=\"read\""))
            .filter_map(|l| l.split("name=\"").nth(1)?.split('"').next())
            .map(str::to_string)
            .collect();
        ReadOnlyProps { inner, read_only }
    }
}

impl<I> std::ops::Deref for ReadOnlyProps<I> {
    type Target = I;
    fn deref(&self) -> &I {
        &self.inner
    }
}

#[async_trait::async_trait]
impl<I: Interface> Interface for ReadOnlyProps<I> {
    fn name() -> InterfaceName<'static> {
        I::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.inner.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<OwnedVariant, BoxDBusError>> {
        self.inner
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> zbus::fdo::Result<HashMap<String, OwnedVariant>> {
        self.inner
            .get_all(server, connection, header, emitter)
            .await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Variant<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult<'call> {
        if self.read_only.iter().any(|p| p == property_name) {
            let msg = format!("property {property_name} is read-only");
            return DispatchResult::Async(Box::pin(async move {
                Err(zbus::fdo::Error::PropertyReadOnly(msg).into())
            }));
        }
        self.inner
            .set(property_name, value, server, connection, header, emitter)
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Variant<'_>,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<(), BoxDBusError>> {
        self.inner
            .set_mut(property_name, value, server, connection, header, emitter)
            .await
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        self.inner.call(server, connection, msg, name)
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        self.inner.call_mut(server, connection, msg, name)
    }

    fn introspect_to_writer(&self, writer: &mut dyn Write, level: usize) {
        self.inner.introspect_to_writer(writer, level)
    }
}
